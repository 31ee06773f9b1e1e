"""Paths through a flow: counting, enumeration, uniform sampling and coverage-guided selection.

A path is a list of node ids from `flow.start` to a terminal in which no node appears more than
`max_visits` times (1: acyclic; 2: every loop may run once more). Terminals end a path (their
outgoing edges, an error the validator reports, are ignored); edges to missing nodes are ignored;
parallel edges between the same two nodes give one path, since a path is a list of nodes.
A path's length is the number of agent and user nodes on it.

How it stays fast without enumerating: a walk can never return to a strongly connected component
(SCC) it has left, so the only state a walk needs to carry is how often it has visited each node of
the SCC it is in now. The states (node, visit counts in its SCC) form a DAG, and one memoized pass
over it gives, for every state, the exact number of ways to finish and their length histogram
(Python integers: no overflow). Flowcharts have small loops, so this pass touches a few hundred
states for the 55-node insurance flow and stays linear for huge loop-free flows with 10^30 paths.
Sampling walks down the same DAG choosing each step in proportion to the counts below it, which is
exactly uniform over all paths; weighting each step by edge weights instead samples paths in
proportion to the product of their weights. Coverage selection adds, per edge, the number of paths
below each state that use it, so it can draw uniformly among the paths through a rare edge.

Exact: counts, histograms, enumeration, uniform and weighted sampling, whenever the state DAG has at
most `MAX_STATES` states. Only a large, densely connected SCC (every node talking to every other)
explodes it; then counting falls back to a depth-first enumeration that stops at the cap or after
`FALLBACK_SECONDS` (a lower bound, `PathStats.exact` false, `total` None) and sampling to random
walks that respect `max_visits` (valid paths, but not uniform; `PathIndex.exact_sampling` false).
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections.abc import Iterator
from functools import cached_property

import networkx as nx
from pydantic import BaseModel, ConfigDict, Field

from engine.flow import Flow

MAX_STATES = 50_000  # flowcharts need hundreds; a dense 13-node SCC needs 53k (~3 s) and falls back
FALLBACK_SECONDS = 3.0  # how long the fallback enumerates before reporting what it counted as a lower bound

Key = tuple[str, tuple[int, ...]]  # (node id, visit counts of the nodes of its SCC)


class PathStats(BaseModel):
    model_config = ConfigDict(extra="forbid")

    nodes: int = Field(description="Number of nodes.")
    decision_hubs: int = Field(description="Nodes with two or more outgoing edges.")
    terminals: int = Field(description="Number of terminal nodes.")
    paths: int = Field(description="Number of valid paths; when `exact` is false, a lower bound (the cap).")
    exact: bool = Field(description="True when `paths` is the exact count, false when the count is at least `paths`.")
    total: int | None = Field(
        None, description="The exact count even above the cap, when it could be computed without enumerating."
    )
    min_len: int | None = Field(description="Fewest agent+user turns on a path; None when there is no path.")
    max_len: int | None = Field(description="Most agent+user turns on a path; None when there is no path.")
    length_histogram: dict[int, int] = Field(description="Path length -> number of paths with that length.")
    max_visits: int = Field(description="How often a path may visit one node.")
    cap: int = Field(description="Counts above this are reported as 'at least cap'.")


# ----------------------------------------------------------------------------------------------
# public API


def flow_graph(flow: Flow) -> nx.MultiDiGraph:
    """The flow as a networkx multigraph: node attributes role/label/speaks, edges keyed by edge id.
    Edges to missing nodes are left out (the validator reports them)."""
    g = nx.MultiDiGraph(name=flow.name, start=flow.start)
    for n in flow.nodes:
        if n.id not in g:
            g.add_node(n.id, role=n.role, label=n.label, speaks=n.speaks)
    for e in flow.edges:
        if e.source in g and e.target in g:
            g.add_edge(e.source, e.target, key=e.id, when=e.when, weight=e.weight)
    return g


def decision_hubs(flow: Flow) -> list[str]:
    """Ids of nodes with two or more outgoing edges, in node order."""
    counts: dict[str, int] = {}
    for e in flow.edges:
        counts[e.source] = counts.get(e.source, 0) + 1
    return [nid for nid in dict.fromkeys(n.id for n in flow.nodes) if counts.get(nid, 0) >= 2]


def path_length(flow: Flow, path: list[str]) -> int:
    """Number of agent and user nodes on the path."""
    roles = {n.id: n.role for n in flow.nodes}
    return sum(1 for nid in path if roles.get(nid) in ("agent", "user"))


def path_stats(flow: Flow, max_visits: int = 1, cap: int = 1_000_000) -> PathStats:
    index = path_index(flow, max_visits)
    total, hist, exact = index.count(cap)
    lengths = [k for k, v in hist.items() if v]
    return PathStats(
        nodes=len(index.roles), decision_hubs=len(decision_hubs(flow)), terminals=len(flow.terminals),
        paths=min(total, cap), exact=exact and total <= cap,
        total=total if exact else None, min_len=min(lengths) if lengths else None,
        max_len=max(lengths) if lengths else None, length_histogram=dict(sorted(hist.items())),
        max_visits=max_visits, cap=cap,
    )


def iter_paths(flow: Flow, max_visits: int = 1) -> Iterator[list[str]]:
    """Every valid path, depth-first in edge order."""
    return path_index(flow, max_visits).iter_paths()


def sample_paths(flow: Flow, n: int, seed: int = 0, max_visits: int = 1, weighted: bool = False) -> list[list[str]]:
    """`n` independent draws (with replacement), each uniform over all valid paths.

    With `weighted`, a path's probability is proportional to the product of its edges' weights
    instead (an edge without a weight counts 1; parallel edges add up), still over valid paths only:
    the expert's "most customers accept" becomes more accepting conversations."""
    index = path_index(flow, max_visits)
    rng = random.Random(seed)
    return index.sample_weighted(n, rng) if weighted else index.sample(n, rng)


def coverage_paths(flow: Flow, n: int, k: int = 1, seed: int = 0, max_visits: int = 1) -> list[list[str]]:
    """`n` paths in which every edge that lies on some valid path is on at least `k` of them, when `n`
    is large enough; the remaining paths are uniform draws. Returned in shuffled order."""
    return path_index(flow, max_visits).coverage(n, k, random.Random(seed))


def path_index(flow: Flow, max_visits: int = 1) -> PathIndex:
    """The (cached) index for this flow's content: callers that sample one path per conversation do
    not rebuild it each time. Keyed by the flow's JSON, so an edited flow gets a fresh index."""
    key = (hashlib.sha256(flow.model_dump_json().encode()).hexdigest(), max_visits)
    with _INDEX_LOCK:
        index = _INDEX_CACHE.pop(key, None) or PathIndex(flow, max_visits)
        _INDEX_CACHE[key] = index  # most recently used last
        while len(_INDEX_CACHE) > _INDEX_CACHE_SIZE:
            _INDEX_CACHE.pop(next(iter(_INDEX_CACHE)))
    return index


_INDEX_CACHE: dict[tuple[str, int], PathIndex] = {}
_INDEX_CACHE_SIZE = 16
_INDEX_LOCK = threading.Lock()


def is_valid_path(flow: Flow, path: list[str], max_visits: int = 1) -> bool:
    """Whether `path` starts at the start, follows edges, ends at its first terminal and visits no node
    more than `max_visits` times."""
    roles = {n.id: n.role for n in flow.nodes}
    if not path or path[0] != flow.start or any(nid not in roles for nid in path):
        return False
    if roles[path[-1]] != "terminal" or any(roles[nid] == "terminal" for nid in path[:-1]):
        return False
    pairs = {(e.source, e.target) for e in flow.edges}
    if any((a, b) not in pairs for a, b in zip(path, path[1:], strict=False)):
        return False
    return all(path.count(nid) <= max_visits for nid in set(path))


# ----------------------------------------------------------------------------------------------
# the state DAG


class _TooManyStates(Exception):
    pass


class PathIndex:
    """Counts, enumerates and samples the paths of one flow for one `max_visits` (see module doc)."""

    def __init__(self, flow: Flow, max_visits: int = 1, max_states: int = MAX_STATES):
        if max_visits < 1:
            raise ValueError(f"max_visits must be at least 1, got {max_visits}")
        self.k, self.max_states = max_visits, max_states
        self.roles: dict[str, str] = {}
        for node in flow.nodes:
            self.roles.setdefault(node.id, node.role)
        self.speaks = {nid: int(role in ("agent", "user")) for nid, role in self.roles.items()}
        self.succ: dict[str, list[str]] = {nid: [] for nid in self.roles}
        for e in flow.edges:
            if e.source in self.roles and e.target in self.roles and self.roles[e.source] != "terminal":
                if e.target not in self.succ[e.source]:
                    self.succ[e.source].append(e.target)
        # read everything from `flow` now: the index is cached by content and must not see later edits
        self.pair_weight: dict[tuple[str, str], float] = {}
        for e in flow.edges:
            pair = (e.source, e.target)
            self.pair_weight[pair] = self.pair_weight.get(pair, 0.0) + (1.0 if e.weight is None else e.weight)
        g = nx.DiGraph(self.succ)
        g.add_nodes_from(self.roles)
        self.pos: dict[str, tuple[int, int, int]] = {}  # node -> (scc id, index in scc, scc size)
        for cid, comp in enumerate(nx.strongly_connected_components(g)):
            for i, nid in enumerate(sorted(comp)):
                self.pos[nid] = (cid, i, len(comp))
        self.hist: dict[Key, dict[int, int]] = {}  # state -> length of the rest of the path -> ways
        self.cnt: dict[Key, int] = {}
        self.kids: dict[Key, list[Key]] = {}
        self._too_many = False
        self._lock = threading.Lock()
        self.root: Key | None = self._enter(flow.start) if flow.start in self.roles else None

    @cached_property
    def exact_sampling(self) -> bool:
        """False when the state space was too large and sampling falls back to random walks."""
        return self._solved()

    # -- counting ---------------------------------------------------------------------------------
    def count(self, cap: int = 1_000_000) -> tuple[int, dict[int, int], bool]:
        """(number of paths, length histogram, exact). Inexact means at least that many."""
        if self.root is None:
            return 0, {}, True
        if self._solved():
            return self.cnt[self.root], dict(self.hist[self.root]), True
        hist: dict[int, int] = {}
        total, deadline = 0, time.monotonic() + FALLBACK_SECONDS
        for path in self._dfs_paths():
            total += 1
            length = sum(self.speaks[nid] for nid in path)
            hist[length] = hist.get(length, 0) + 1
            if total >= cap or (total % 1024 == 0 and time.monotonic() > deadline):
                return total, hist, False
        return total, hist, True

    def _solved(self) -> bool:
        if self.root is None:
            return True
        with self._lock:  # one index may be shared by the studio and a background thread
            if self.root in self.cnt:
                return True
            if self._too_many:
                return False
            try:
                self._solve(self.root)
            except _TooManyStates:
                self._too_many = True
                self.hist.clear()
                self.cnt.clear()
                self.kids.clear()
                return False
            return True

    def _solve(self, root: Key) -> None:
        """Post-order over the state DAG; children are solved before their parents (so `self.cnt` keeps a
        topological order: every state after all the states it leads to)."""
        stack: list[tuple[Key, bool]] = [(root, False)]
        while stack:
            key, expanded = stack.pop()
            if key in self.cnt:
                continue
            if expanded:
                self._combine(key)
                continue
            kids = self.kids[key] = self._children(key)
            stack.append((key, True))
            stack.extend((c, False) for c in kids if c not in self.cnt)
            if len(self.kids) > self.max_states:
                raise _TooManyStates

    def _combine(self, key: Key) -> None:
        nid = key[0]
        s = self.speaks[nid]
        if self.roles[nid] == "terminal":
            hist = {s: 1}
        else:
            hist = {}
            for c in self.kids[key]:
                for length, ways in self.hist[c].items():
                    hist[length + s] = hist.get(length + s, 0) + ways
        self.hist[key], self.cnt[key] = hist, sum(hist.values())

    def _enter(self, nid: str) -> Key:
        _, i, size = self.pos[nid]
        counts = [0] * size
        counts[i] = 1
        return nid, tuple(counts)

    def _step(self, key: Key, nid: str) -> Key | None:
        """The state after moving from `key` to node `nid`, or None when that would exceed max_visits."""
        here, counts = key
        if self.pos[nid][0] != self.pos[here][0]:
            return self._enter(nid)
        i = self.pos[nid][1]
        if counts[i] >= self.k:
            return None
        return nid, counts[:i] + (counts[i] + 1,) + counts[i + 1:]

    def _children(self, key: Key) -> list[Key]:
        out = []
        for nid in self.succ[key[0]]:
            nxt = self._step(key, nid)
            if nxt is not None:
                out.append(nxt)
        return out

    # -- enumeration ------------------------------------------------------------------------------
    def iter_paths(self) -> Iterator[list[str]]:
        if self.root is None:
            return iter(())
        if not self._solved():
            return self._dfs_paths()
        return self._dag_paths()

    def _dag_paths(self) -> Iterator[list[str]]:
        """Depth-first over live states only (count > 0), so no work is spent on dead branches."""
        assert self.root is not None
        if not self.cnt[self.root]:
            return
        if self.roles[self.root[0]] == "terminal":
            yield [self.root[0]]
            return
        path, stack = [self.root[0]], [iter(self.kids[self.root])]
        while stack:
            child = next(stack[-1], None)
            if child is None:
                stack.pop()
                path.pop()
                continue
            if not self.cnt[child]:
                continue
            path.append(child[0])
            if self.roles[child[0]] == "terminal":
                yield list(path)
                path.pop()
            else:
                stack.append(iter(self.kids[child]))

    def _dfs_paths(self) -> Iterator[list[str]]:
        """Plain depth-first enumeration with visit counters (the fallback; no memo)."""
        assert self.root is not None
        start = self.root[0]
        if self.roles[start] == "terminal":
            yield [start]
            return
        visits = {start: 1}
        path, stack = [start], [iter(self.succ[start])]
        while stack:
            nid = next(stack[-1], None)
            if nid is None:
                stack.pop()
                gone = path.pop()
                visits[gone] -= 1
                continue
            if visits.get(nid, 0) >= self.k:
                continue
            if self.roles[nid] == "terminal":
                yield path + [nid]
                continue
            path.append(nid)
            visits[nid] = visits.get(nid, 0) + 1
            stack.append(iter(self.succ[nid]))

    # -- sampling ---------------------------------------------------------------------------------
    def sample(self, n: int, rng: random.Random) -> list[list[str]]:
        if self.root is None or n <= 0:
            return []
        if not self._solved():
            return [p for p in (self._random_walk(rng) for _ in range(n)) if p]
        if not self.cnt[self.root]:
            return []
        return [self._walk(self.root, rng.randrange(self.cnt[self.root]), self.cnt) for _ in range(n)]

    def _walk(self, key: Key, r: int, weight: dict[Key, int], edge: tuple[str, str] | None = None,
              through: dict[Key, int] | None = None) -> list[str]:
        """The path numbered `r` among those below `key` (0 <= r < weight[key]). With `edge`, only paths
        that use that edge are numbered (`through` counts them per state)."""
        path = [key[0]]
        while self.roles[key[0]] != "terminal":
            for c in self.kids[key]:
                if edge is not None and through is not None:
                    w = self.cnt[c] if (key[0], c[0]) == edge else through[c]
                else:
                    w = self.cnt[c]
                if r < w:
                    if edge is not None and (key[0], c[0]) == edge:
                        edge = None  # used it: the rest is an ordinary uniform suffix
                    key = c
                    break
                r -= w
            path.append(key[0])
        return path

    def sample_weighted(self, n: int, rng: random.Random) -> list[list[str]]:
        """Draws with probability proportional to the product of edge weights along the path."""
        if self.root is None or n <= 0:
            return []
        if not self._solved():
            return [p for p in (self._random_walk(rng) for _ in range(n)) if p]
        mass = self._weighted_mass()
        if mass[self.root] <= 0:
            return []
        out = []
        for _ in range(n):
            key, path = self.root, [self.root[0]]
            while self.roles[key[0]] != "terminal":
                options = [(c, self.pair_weight[key[0], c[0]] * mass[c]) for c in self.kids[key]]
                options = [(c, w) for c, w in options if w > 0]
                r = rng.random() * sum(w for _, w in options)
                for c, w in options:
                    key = c
                    if r < w:
                        break
                    r -= w  # on rounding trouble the last option is taken
                path.append(key[0])
            out.append(path)
        return out

    def _weighted_mass(self) -> dict[Key, float]:
        """For every state, the summed weight-products of the paths below it (topological order)."""
        mass: dict[Key, float] = {}
        for key in self.cnt:
            if self.roles[key[0]] == "terminal":
                mass[key] = 1.0
            else:
                mass[key] = sum(self.pair_weight[key[0], c[0]] * mass[c] for c in self.kids[key])
        return mass

    def _random_walk(self, rng: random.Random, tries: int = 1000) -> list[str] | None:
        """Fallback sampler: a random walk that respects max_visits, retried when it gets stuck."""
        assert self.root is not None
        for _ in range(tries):
            path, visits, nid = [self.root[0]], {self.root[0]: 1}, self.root[0]
            while self.roles[nid] != "terminal":
                options = [t for t in self.succ[nid] if visits.get(t, 0) < self.k]
                if not options:
                    break
                nid = rng.choice(options)
                visits[nid] = visits.get(nid, 0) + 1
                path.append(nid)
            else:
                return path
        return None

    # -- coverage ---------------------------------------------------------------------------------
    def coverage(self, n: int, k: int, rng: random.Random) -> list[list[str]]:
        if self.root is None or n <= 0:
            return []
        if not self._solved() or not self.cnt[self.root]:
            return self.sample(n, rng)
        deficit = {pair: k for pair in self.usable_edges()}
        through = {pair: self._through(pair) for pair in deficit}
        out: list[list[str]] = []
        while len(out) < n and any(d > 0 for d in deficit.values()):
            # the rarest edge first: common ones get covered on the way
            pair = min((p for p, d in deficit.items() if d > 0), key=lambda p: through[p][self.root])  # type: ignore[index]
            candidates = [self._sample_through(pair, through[pair], rng) for _ in range(4)]
            best = max(candidates, key=lambda path: sum(deficit.get(q, 0) > 0 for q in _pairs(path)))
            out.append(best)
            for q in _pairs(best):
                if q in deficit:
                    deficit[q] -= 1
        out += self.sample(n - len(out), rng)
        rng.shuffle(out)
        return out

    def usable_edges(self) -> list[tuple[str, str]]:
        """(source, target) pairs that lie on at least one valid path, in order of discovery."""
        if not self._solved():
            return []
        seen: dict[tuple[str, str], None] = {}
        for key, kids in self.kids.items():
            if self.cnt.get(key):
                for c in kids:
                    if self.cnt[c]:
                        seen.setdefault((key[0], c[0]), None)
        return list(seen)

    def _through(self, edge: tuple[str, str]) -> dict[Key, int]:
        """For every state, how many of the paths below it use `edge` (one pass in topological order)."""
        out: dict[Key, int] = {}
        for key in self.cnt:  # children come before parents
            out[key] = sum(self.cnt[c] if (key[0], c[0]) == edge else out[c] for c in self.kids[key])
        return out

    def _sample_through(self, edge: tuple[str, str], through: dict[Key, int], rng: random.Random) -> list[str]:
        assert self.root is not None
        return self._walk(self.root, rng.randrange(through[self.root]), self.cnt, edge, through)


def _pairs(path: list[str]) -> set[tuple[str, str]]:
    return set(zip(path, path[1:], strict=False))
