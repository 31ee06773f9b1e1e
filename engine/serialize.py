"""The in-context serialization: a flowchart written out as the system prompt of the in-context agent.

This is the paper's in-context baseline: the whole procedure goes into the system prompt and the
model tracks where it is by itself, one call per turn. The text is deterministic (same flow, same
text, byte for byte) so that prompt caching works and evaluations are reproducible. Its layout:

    <flow.system_prompt>                      the persona, if the flow has one
    You follow the procedure "<name>" ...     a fixed preamble: how to read what follows
    PROCEDURE
    Start at step [<start>].
    [<id>] <ROLE> "<label>"                   one block per node, start first, then in
      Instruction: <prompt>                   breadth-first order along edges (declaration
      Example: "<example>"                    order among siblings), unreachable nodes last
      Next: -> [<target>] if <condition>      every out-edge, with its condition when there is one
    OUTCOMES
    [<id>] ends the conversation: <outcome>   each terminal
    RULES                                     fixed closing rules (one step per turn, etc.)

`{variable}` placeholders in prompts are kept as written: at run time the values come from the
user, and the placeholder tells the model what to ask for. Decision hubs say no words; their
out-edges tell the model how to branch.
"""

from __future__ import annotations

from collections import deque

from engine.flow import Edge, Flow, Node

ROLE_NAMES = {"agent": "AGENT SAYS", "user": "USER SAYS", "decision": "DECIDE", "terminal": "END"}

PREAMBLE = (
    'You follow the procedure "{name}" below, a flowchart of steps. You speak only as the agent. '
    "AGENT SAYS steps are your turns: do what their instruction says, in one message. USER SAYS steps are "
    "the customer's turns: they tell you what to expect. DECIDE steps are silent: pick the branch whose "
    "condition matches the conversation. Keep track of the step you are at; never skip ahead and never "
    "mention the procedure, steps or conditions to the customer."
)

RULES = (
    "RULES\n"
    "- Reply with the agent's next message only: no step names, no notes, no role labels.\n"
    "- One agent step per reply; wait for the customer after each of your turns that leads to theirs.\n"
    "- Use the details the customer gave; ask for what is missing rather than inventing it.\n"
    "- When you reach an END step, close the conversation politely and stop."
)


def serialize_flow(flow: Flow) -> str:
    """The in-context system prompt for `flow` (see the module docstring for the layout)."""
    parts: list[str] = []
    if flow.system_prompt.strip():
        parts.append(flow.system_prompt.strip())
    intro = PREAMBLE.format(name=flow.name)
    if flow.description.strip():
        intro += f"\nPurpose: {_one_line(flow.description)}"
    parts.append(intro)
    order = node_order(flow)
    lines = ["PROCEDURE", f"Start at step [{flow.start}]." if flow.start else "Start at the first step."]
    for node in order:
        lines.extend(_node_block(flow, node))
    parts.append("\n".join(lines))
    if flow.terminals:
        outcomes = ["OUTCOMES"] + [
            f"[{t.id}] ends the conversation: {t.outcome or 'done'}" + (f" ({_one_line(t.label)})" if t.label else "")
            for t in order if t.role == "terminal"
        ]
        parts.append("\n".join(outcomes))
    parts.append(RULES)
    return "\n\n".join(parts) + "\n"


def node_order(flow: Flow) -> list[Node]:
    """Start node first, then breadth-first along edges in declaration order; unreachable nodes last."""
    seen: dict[str, None] = {}
    queue = deque([flow.start] if flow.start in flow.node_map else [])
    while queue:
        nid = queue.popleft()
        if nid in seen:
            continue
        seen[nid] = None
        queue.extend(e.target for e in flow.out_edges(nid) if e.target in flow.node_map)
    rest = [n.id for n in flow.nodes if n.id not in seen]
    return [flow.node(nid) for nid in [*seen, *rest]]


def edge_text(edge: Edge, flow: Flow) -> str:
    """How an edge reads: `-> [target] "label" if condition`."""
    target = flow.node_map.get(edge.target)
    label = f' "{_one_line(target.label)}"' if target and target.label else ""
    cond = f" if {_one_line(edge.when)}" if edge.when and edge.when.strip() else ""
    return f"-> [{edge.target}]{label}{cond}"


def _node_block(flow: Flow, node: Node) -> list[str]:
    head = f"[{node.id}] {ROLE_NAMES[node.role]}"
    if node.label:
        head += f' "{_one_line(node.label)}"'
    lines = [head]
    if node.prompt.strip():
        lines.append(f"  Instruction: {_one_line(node.prompt)}")
    for ex in node.examples[:2]:  # two are enough to show the register; more only lengthen every prompt
        lines.append(f'  Example: "{_one_line(ex)}"')
    outs = flow.out_edges(node.id)
    if node.role == "terminal":
        lines.append(f"  The conversation ends here ({node.outcome or 'done'}).")
    for e in outs:
        lines.append(f"  Next: {edge_text(e, flow)}")
    return lines


def _one_line(text: str) -> str:
    return " ".join(text.split())
