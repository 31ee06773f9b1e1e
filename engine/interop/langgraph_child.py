"""Runs in a separate Python process (started by `engine.interop.langgraph`): import a LangGraph file,
find its StateGraph and write the graph's structure as JSON. Standalone on purpose: it imports nothing of
subterra, and it is started with `python -c` so this folder never shadows a package the file imports.

    python -c "<this file>" GRAPH.py OUT.json

OUT.json is {"graph": {...}} or {"error": "one line"}; the user file's prints go to stderr.
"""

import importlib.util
import json
import os
import sys
import traceback
import uuid

FACTORIES = ("build_graph", "make_graph", "create_graph", "get_graph")
VARIABLES = ("graph", "app", "workflow", "builder", "agent")
NO_GRAPH = ("found no LangGraph StateGraph: define `build_graph()` returning one, or a module-level `graph` "
            "(a StateGraph or its compiled graph)")


def main(path, out):
    sys.stdout = sys.stderr  # the file's own prints must not mix with anything we report
    try:
        result = {"graph": describe(path)}
    except Failure as e:
        result = {"error": str(e)}
    except BaseException as e:  # noqa: BLE001 - anything the user's code raises becomes one line
        result = {"error": _raised(e, path, "importing the file")}
    with open(out, "w", encoding="utf-8") as f:
        json.dump(result, f)


class Failure(Exception):
    pass


def describe(path):
    name = "_subterra_lg_" + uuid.uuid4().hex
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise Failure("cannot load it as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as e:  # noqa: BLE001
        raise Failure(_raised(e, path, "importing the file")) from None
    candidates = []  # (object, where it came from), in the order they are tried
    for fname in FACTORIES:
        fn = getattr(module, fname, None)
        if callable(fn) and not isinstance(fn, type):
            try:
                candidates.append((fn(), f"{fname}()"))
            except BaseException as e:  # noqa: BLE001
                raise Failure(_raised(e, path, f"calling {fname}()")) from None
            break
    candidates += [(getattr(module, v, None), f"the module variable '{v}'") for v in VARIABLES]
    if "langgraph" not in sys.modules:  # nothing imported it, so there is no StateGraph (and no import to pay)
        raise Failure(NO_GRAPH)
    from langgraph.graph import StateGraph

    for obj, where in candidates:
        found = _builder(obj, StateGraph)
        if found is not None:
            return _structure(found, where)
    graphs = [(k, _builder(v, StateGraph)) for k, v in vars(module).items() if not k.startswith("_")]
    graphs = [(k, g) for k, g in graphs if g is not None]
    if len({id(g) for _, g in graphs}) == 1:
        return _structure(graphs[0][1], f"the module variable '{graphs[0][0]}'")
    raise Failure(NO_GRAPH)


def _builder(obj, StateGraph):
    if isinstance(obj, StateGraph):
        return obj
    b = getattr(obj, "builder", None)
    return b if isinstance(b, StateGraph) else None


def _structure(g, where):
    nodes = []
    funcs = {name: getattr(getattr(spec, "runnable", None), "func", None) for name, spec in g.nodes.items()}
    uses: dict[int, int] = {}
    for func in funcs.values():
        uses[id(func)] = uses.get(id(func), 0) + 1
    for name, spec in g.nodes.items():
        func = funcs[name]
        # a docstring describes its step only when the function is that one step's own
        own = func is not None and not _is_lambda(func) and uses[id(func)] == 1
        doc = (getattr(func, "__doc__", None) or "").strip() if own else ""
        doc = " ".join(doc.split("\n\n")[0].split())  # its first paragraph, not Args:/Returns:
        destinations = list(getattr(spec, "ends", None) or ())
        nodes.append({"name": str(name), "doc": doc, "destinations": [str(x) for x in destinations]})
    edges = sorted([str(a), str(b)] for a, b in g.edges)
    for starts, end in sorted(getattr(g, "waiting_edges", set()) or set(), key=repr):
        for s in starts:
            edges.append([str(s), str(end)])
    branches = []
    for src, specs in g.branches.items():
        for bname, b in specs.items():
            ends = getattr(b, "ends", None)
            branches.append({"source": str(src), "name": str(bname),
                             "ends": None if ends is None else [[str(k), str(v)] for k, v in ends.items()]})
    return {"found_in": where, "nodes": nodes, "edges": edges, "branches": branches}


def _is_lambda(func):
    return getattr(func, "__name__", "") == "<lambda>"


def _raised(e, path, doing):
    if isinstance(e, SystemExit):
        return f"the file called sys.exit({e.code!r}) while {doing}; a graph file should only build the graph"
    if isinstance(e, KeyboardInterrupt):
        return f"interrupted while {doing}"
    if isinstance(e, SyntaxError):
        return f"SyntaxError at line {e.lineno} while {doing}: {e.msg}"
    line = ""
    for frame in reversed(traceback.extract_tb(e.__traceback__)):
        if os.path.abspath(frame.filename) == os.path.abspath(path):
            line = f" at line {frame.lineno}"
            break
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if isinstance(e, ModuleNotFoundError) and e.name and e.name.split(".")[0] == "langgraph":
        msg += "; install it with `pip install langgraph`"
    return f"{type(e).__name__}{line} while {doing}" + (f": {msg}" if msg else "")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
