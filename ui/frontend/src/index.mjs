// What the canvas component (ui/components/flow_canvas.js) imports as "subterra-flow".
import "@vue-flow/core/dist/style.css";
import "@vue-flow/core/dist/theme-default.css";
import "@vue-flow/controls/dist/style.css";
import "@vue-flow/minimap/dist/style.css";

export { VueFlow, Handle, Position, MarkerType, BaseEdge, useVueFlow } from "@vue-flow/core";
export { Background } from "@vue-flow/background";
export { Controls, ControlButton } from "@vue-flow/controls";
export { MiniMap } from "@vue-flow/minimap";
export { default as dagre } from "@dagrejs/dagre";
