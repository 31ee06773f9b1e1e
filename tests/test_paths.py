"""Paths: exact counts against brute force, uniform sampling, coverage, caps and speed."""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import networkx as nx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from engine.flow import Flow
from engine.paths import (
    PathIndex,
    coverage_paths,
    decision_hubs,
    flow_graph,
    is_valid_path,
    iter_paths,
    path_length,
    path_stats,
    sample_paths,
)

SAMPLES = Path(__file__).resolve().parent.parent / "sample_flows"


def make_flow(roles: dict[str, str], edges: list[tuple[str, str]], start: str = "a", **kw: Any) -> Flow:
    return Flow.model_validate({
        "name": kw.get("name", "t"), "start": start,
        "nodes": [{"id": i, "role": r, "prompt": "p"} for i, r in roles.items()],
        "edges": [{"source": s, "target": t, "when": f"{s} to {t}"} for s, t in edges],
    })


def loop_flow() -> Flow:
    """greet -> ask -> hub -> (ask again | book -> done) and ask -> quit."""
    return make_flow(
        {"a": "agent", "b": "user", "c": "decision", "d": "agent", "done": "terminal", "quit": "terminal"},
        [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d"), ("d", "done"), ("b", "quit")],
    )


def diamonds(stages: int, width: int, loops: bool = True) -> Flow:
    """`stages` hubs in a row, each with `width` branches that merge again: width**stages paths.
    With `loops`, each merge node may go back to its hub (a small SCC per stage)."""
    roles: dict[str, str] = {"a": "agent"}
    edges: list[tuple[str, str]] = []
    prev = "a"
    for s in range(stages):
        hub, merge = f"h{s}", f"m{s}"
        roles[hub], roles[merge] = "decision", "user"
        edges.append((prev, hub))
        for b in range(width):
            roles[f"s{s}b{b}"] = "agent"
            edges += [(hub, f"s{s}b{b}"), (f"s{s}b{b}", merge)]
        if loops:
            edges.append((merge, hub))
        prev = merge
    roles["end"] = "terminal"
    edges.append((prev, "end"))
    return make_flow(roles, edges)


def brute_force(flow: Flow, k: int) -> list[tuple[str, ...]]:
    """The definition, written as plainly as possible (exponential; small graphs only)."""
    roles = {n.id: n.role for n in flow.nodes}
    succ: dict[str, list[str]] = {}
    for e in flow.edges:
        if e.source in roles and e.target in roles and e.target not in succ.setdefault(e.source, []):
            succ[e.source].append(e.target)
    out: list[tuple[str, ...]] = []

    def walk(path: list[str]) -> None:
        here = path[-1]
        if roles[here] == "terminal":
            out.append(tuple(path))
            return
        for nxt in succ.get(here, []):
            if path.count(nxt) < k:
                walk(path + [nxt])

    if flow.start in roles:
        walk([flow.start])
    return out


# ----------------------------------------------------------------------------------------------
# basics


def test_loop_flow_counts_by_max_visits() -> None:
    f = loop_flow()
    assert [p for p in iter_paths(f)] == [["a", "b", "c", "d", "done"], ["a", "b", "quit"]]
    s2 = path_stats(f, max_visits=2)
    assert (s2.paths, s2.exact, s2.min_len, s2.max_len) == (4, True, 2, 5)
    assert s2.length_histogram == {2: 1, 3: 1, 4: 1, 5: 1}
    assert path_stats(f, max_visits=3).paths == 6


def test_hubs_length_graph() -> None:
    f = loop_flow()
    assert decision_hubs(f) == ["b", "c"]
    assert path_length(f, ["a", "b", "c", "d", "done"]) == 3
    g = flow_graph(f)
    assert isinstance(g, nx.MultiDiGraph)
    assert g.nodes["c"]["role"] == "decision" and g.number_of_edges() == 6
    assert g.edges["c", "a", "c->a"]["when"] == "c to a"


def test_is_valid_path() -> None:
    f = loop_flow()
    assert is_valid_path(f, ["a", "b", "quit"])
    assert not is_valid_path(f, ["a", "b"])  # does not end at a terminal
    assert not is_valid_path(f, ["b", "quit"])  # does not start at the start
    assert not is_valid_path(f, ["a", "c", "d", "done"])  # no edge a -> c
    looped = ["a", "b", "c", "a", "b", "quit"]
    assert not is_valid_path(f, looped)
    assert is_valid_path(f, looped, max_visits=2)


def test_terminal_exits_and_dangling_edges_are_ignored() -> None:
    f = make_flow({"a": "agent", "t": "terminal", "b": "agent"}, [("a", "t"), ("t", "b"), ("b", "t"), ("a", "zz")])
    assert list(iter_paths(f)) == [["a", "t"]]


def test_no_start_or_no_terminal_means_no_paths() -> None:
    f = make_flow({"a": "agent", "b": "user"}, [("a", "b"), ("b", "a")])
    s = path_stats(f, max_visits=3)
    assert (s.paths, s.exact, s.min_len, s.max_len) == (0, True, None, None)
    assert sample_paths(f, 5) == [] and coverage_paths(f, 5) == []
    assert path_stats(make_flow({"a": "agent"}, [], start="x")).paths == 0


def test_max_visits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_visits must be at least 1"):
        path_stats(loop_flow(), max_visits=0)


# ----------------------------------------------------------------------------------------------
# property: exact counts, histograms and enumeration equal brute force


@st.composite
def small_flows(draw: st.DrawFn) -> Flow:
    n = draw(st.integers(1, 7))
    ids = [chr(ord("a") + i) for i in range(n)]
    roles = {i: draw(st.sampled_from(["agent", "user", "decision", "terminal"])) for i in ids}
    pairs = [(s, t) for s in ids for t in ids]
    edges = draw(st.lists(st.sampled_from(pairs), max_size=14)) if pairs else []
    return make_flow(roles, edges, start=draw(st.sampled_from(ids)))


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_flows(), st.integers(1, 3))
def test_counts_equal_brute_force(flow: Flow, k: int) -> None:
    expected = brute_force(flow, k)
    stats = path_stats(flow, max_visits=k)
    assert stats.exact and stats.paths == len(expected) == len(set(expected))
    assert stats.length_histogram == dict(sorted(Counter(path_length(flow, list(p)) for p in expected).items()))
    assert [tuple(p) for p in iter_paths(flow, k)] == expected  # same depth-first edge order
    for p in sample_paths(flow, 5, seed=1, max_visits=k):
        assert tuple(p) in expected and is_valid_path(flow, p, k)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_flows(), st.integers(1, 2))
def test_fallback_agrees_when_the_state_space_is_cut_short(flow: Flow, k: int) -> None:
    """With a tiny state budget the index falls back to depth-first enumeration: still exact when small."""
    index = PathIndex(flow, k, max_states=1)
    total, hist, exact = index.count()
    expected = brute_force(flow, k)
    assert (total, exact) == (len(expected), True)
    assert [tuple(p) for p in index.iter_paths()] == expected
    for p in index.sample(3, random.Random(0)):
        assert tuple(p) in expected


# ----------------------------------------------------------------------------------------------
# sampling and coverage


def test_sampling_is_uniform() -> None:
    """Paths have very different random-walk probabilities here; the sampler must still be uniform."""
    f = diamonds(2, 3, loops=False)  # 9 paths
    f = make_flow({**{n.id: n.role for n in f.nodes}, "x": "terminal"},
                  [(e.source, e.target) for e in f.edges] + [("a", "x")])  # one short path at the root: 10
    paths = [tuple(p) for p in iter_paths(f)]
    assert len(paths) == 10
    draws = Counter(tuple(p) for p in sample_paths(f, 20_000, seed=3))
    assert set(draws) == set(paths)
    _, p_value = chisquare([draws[p] for p in paths])
    assert p_value > 1e-3, draws  # a random walk would give ('a', 'x') half the draws


def test_sampling_is_reproducible() -> None:
    f = diamonds(3, 3)
    assert sample_paths(f, 20, seed=7) == sample_paths(f, 20, seed=7)
    assert sample_paths(f, 20, seed=7) != sample_paths(f, 20, seed=8)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_coverage_covers_every_usable_edge(k: int) -> None:
    f = diamonds(4, 3)  # 81 paths at max_visits 1; 12 branch edges each on 27 paths
    paths = coverage_paths(f, 30, k=k, seed=0)
    assert len(paths) == 30 and all(is_valid_path(f, p) for p in paths)
    usable = {(a, b) for p in iter_paths(f) for a, b in zip(p, p[1:], strict=False)}
    hits = Counter(pair for p in paths for pair in set(zip(p, p[1:], strict=False)))
    assert set(hits) == usable
    assert min(hits[pair] for pair in usable) >= k
    # the loop edges (merge -> hub) cannot lie on an acyclic path and are not asked for
    assert ("m0", "h0") not in usable


def test_coverage_with_loops_and_few_paths() -> None:
    f = loop_flow()
    paths = coverage_paths(f, 3, k=1, max_visits=2)
    covered = {pair for p in paths for pair in zip(p, p[1:], strict=False)}
    assert {("c", "a"), ("b", "quit"), ("d", "done")} <= covered
    assert coverage_paths(f, 1, k=5) and len(coverage_paths(f, 1, k=5)) == 1  # n is the limit


def test_coverage_beats_uniform_on_rare_edges() -> None:
    """One branch sits on 1 path out of 3**6 + 1: uniform sampling almost never finds it."""
    f = diamonds(6, 3, loops=False)
    roles = {n.id: n.role for n in f.nodes} | {"rare": "agent", "x": "terminal"}
    f = make_flow(roles, [(e.source, e.target) for e in f.edges] + [("a", "rare"), ("rare", "x")])
    picked = coverage_paths(f, 10, k=1, seed=0)
    assert ["a", "rare", "x"] in picked


# ----------------------------------------------------------------------------------------------
# scale


def test_huge_flow_answers_at_least_cap_quickly() -> None:
    f = diamonds(20, 3)  # 3**20 = 3.5e9 acyclic paths, 102 nodes, a loop per stage
    t0 = time.perf_counter()
    s = path_stats(f)
    assert time.perf_counter() - t0 < 2.0
    assert (s.paths, s.exact, s.total) == (1_000_000, False, 3**20)
    assert s.min_len == s.max_len == 1 + 2 * 20
    t0 = time.perf_counter()
    sampled = sample_paths(f, 1000, seed=0)
    assert time.perf_counter() - t0 < 2.0
    assert all(is_valid_path(f, p) for p in sampled[:50])
    assert len({tuple(p) for p in sampled}) > 990  # 1000 uniform draws from 3.5e9 barely ever repeat
    with_loops = path_stats(f, max_visits=2)
    assert with_loops.total is not None and with_loops.total > 3**20


def test_small_cap() -> None:
    s = path_stats(diamonds(3, 3), cap=10)
    assert (s.paths, s.exact, s.total) == (10, False, 27)


def insurance_like() -> Flow:
    """A 55-node stand-in with loops, used when sample_flows/insurance.yaml is not there."""
    rng = random.Random(5)
    roles = {f"n{i}": ("agent" if i % 2 == 0 else "user") for i in range(50)}
    roles |= {f"t{i}": "terminal" for i in range(5)}
    edges = [(f"n{i}", f"n{i + 1}") for i in range(49)] + [("n49", "t0")]
    for i in range(0, 48, 4):
        edges.append((f"n{i}", f"n{min(49, i + rng.randint(2, 6))}"))
        edges.append((f"n{i + 3}", f"t{1 + i % 4}"))
    edges += [(f"n{i + 2}", f"n{i}") for i in range(5, 45, 9)]  # re-request loops
    return make_flow(roles, edges, start="n0")


def test_insurance_count_and_enumeration_are_fast() -> None:
    path = SAMPLES / "insurance.yaml"
    if path.exists():
        from engine.formats import load_flow_file

        flow = load_flow_file(path)
    else:
        flow = insurance_like()
    t0 = time.perf_counter()
    stats = path_stats(flow)
    enumerated = sum(1 for _ in iter_paths(flow))
    elapsed = time.perf_counter() - t0
    assert stats.exact and enumerated == stats.paths > 100
    assert elapsed < 0.5, f"{elapsed * 1000:.0f} ms"  # target well under 100 ms; slack for a busy machine


def test_weighted_sampling_follows_edge_weights() -> None:
    """P(path) is proportional to the product of edge weights; dead branches never come up."""
    f = Flow.model_validate({
        "name": "w", "start": "a",
        "nodes": [{"id": i, "role": r} for i, r in
                  [("a", "agent"), ("h", "decision"), ("x", "agent"), ("y", "agent"), ("z", "agent"),
                   ("t", "terminal")]],
        "edges": [{"source": "a", "target": "h"},
                  {"source": "h", "target": "x", "when": "yes", "weight": 3},
                  {"source": "h", "target": "y", "when": "no", "weight": 1},
                  {"source": "h", "target": "z", "when": "dead end", "weight": 100},  # z leads nowhere
                  {"source": "x", "target": "t"}, {"source": "y", "target": "t"}],
    })
    draws = Counter(p[2] for p in sample_paths(f, 8000, seed=2, weighted=True))
    assert set(draws) == {"x", "y"}
    _, p_value = chisquare([draws["x"], draws["y"]], [6000, 2000])
    assert p_value > 1e-3, draws
    uniform = Counter(p[2] for p in sample_paths(f, 8000, seed=2))
    _, p_value = chisquare([uniform["x"], uniform["y"]])
    assert p_value > 1e-3, uniform


def test_weighted_without_weights_is_uniform() -> None:
    f = diamonds(2, 3, loops=False)
    f = make_flow({**{n.id: n.role for n in f.nodes}, "x": "terminal"},
                  [(e.source, e.target) for e in f.edges] + [("a", "x")])
    paths = [tuple(p) for p in iter_paths(f)]
    draws = Counter(tuple(p) for p in sample_paths(f, 20_000, seed=4, weighted=True))
    _, p_value = chisquare([draws[p] for p in paths])
    assert p_value > 1e-3, draws


def dense(n: int) -> Flow:
    """Every agent node talks to every other one: one big SCC, factorially many simple paths."""
    ids = [f"n{i}" for i in range(n)]
    return make_flow({**{i: "agent" for i in ids}, "t": "terminal"},
                     [(a, b) for a in ids for b in ids if a != b] + [(a, "t") for a in ids], start="n0")


def test_dense_scc_falls_back_to_a_lower_bound() -> None:
    f = dense(9)  # 9 * 2^8 states: the exact pass would do, but a small budget forces the fallback
    index = PathIndex(f, 1, max_states=100)
    total, hist, exact = index.count(cap=5000)
    assert (total, exact) == (5000, False) and sum(hist.values()) == 5000
    assert not index.exact_sampling
    sampled = index.sample(20, random.Random(0))
    assert len(sampled) == 20 and all(is_valid_path(f, p) for p in sampled)
    assert all(is_valid_path(f, p) for p in index.coverage(5, 1, random.Random(0)))
    exact_total = path_stats(f).total  # the full budget counts it exactly: sum over k of 8!/(8-k)!
    assert exact_total == sum(40320 // [1, 1, 2, 6, 24, 120, 720, 5040, 40320][8 - k] for k in range(9))


def test_index_is_cached_by_content() -> None:
    from engine.paths import path_index

    f = loop_flow()
    assert path_index(f) is path_index(Flow.model_validate(f.model_dump()))
    assert path_index(f) is not path_index(f, max_visits=2)
    edited = f.copy_deep()
    edited.nodes[0].prompt = "changed"
    assert path_index(edited) is not path_index(f)
