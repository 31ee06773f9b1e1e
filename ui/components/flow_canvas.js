// The canvas: vue-flow (from the "subterra-flow" bundle built in ui/frontend) on NiceGUI's own Vue.
// Python owns the flow. This component renders the `graph` prop and reports what the user did
// (connect, move, remove, select, undo/redo, layout); Python applies it and sends the new graph.
import {
  VueFlow, Handle, Position, MarkerType, Background, Controls, ControlButton, MiniMap, dagre, useVueFlow,
} from "subterra-flow";

const NODE_W = 170;
const NODE_H = 56;

export default {
  components: { VueFlow, Handle, Background, Controls, ControlButton, MiniMap },
  props: { graph: Object, canvasId: String },
  setup(props) {
    // the same store the <VueFlow :id> below uses; gives fitView, selection and measured sizes
    return { store: useVueFlow(props.canvasId), Position };
  },
  data() {
    return { nodes: [], edges: [], removed: null, fitted: false };
  },
  template: `
    <div class="st-canvas" style="width:100%;height:100%" :data-flow-version="graph && graph.version">
      <VueFlow :id="canvasId" :nodes="nodes" :edges="edges"
          :delete-key-code="['Delete', 'Backspace']" :multi-selection-key-code="['Shift', 'Control', 'Meta']"
          :min-zoom="0.05" :max-zoom="2.5" :snap-to-grid="true" :snap-grid="[10, 10]"
          @connect="onConnect" @node-drag-stop="onDragStop"
          @nodes-change="onChanges('nodes', $event)" @edges-change="onChanges('edges', $event)"
          @node-click="onNodeClick" @edge-click="onEdgeClick" @pane-click="$emit('select', {kind: null, id: null})"
          @nodes-initialized="onInitialized">
        <template #node-st="p">
          <div :class="p.data.cls" :style="p.data.style" :data-node="p.id" :title="p.data.tip">
            <Handle type="target" :position="Position.Top" />
            <div class="st-role">{{ p.data.roleText }}</div>
            <div class="st-label">{{ p.data.label }}</div>
            <Handle v-if="p.data.role !== 'terminal'" type="source" :position="Position.Bottom" />
          </div>
        </template>
        <Background :gap="20" />
        <Controls>
          <ControlButton title="auto-layout" class="st-layout" @click="autoLayout">⇅</ControlButton>
        </Controls>
        <MiniMap pannable zoomable :node-color="miniColor" />
      </VueFlow>
    </div>`,
  watch: {
    graph() {
      this.render();
    },
  },
  mounted() {
    this.render();
    this.keyHandler = (e) => this.onKey(e);
    window.addEventListener("keydown", this.keyHandler);
  },
  unmounted() {
    window.removeEventListener("keydown", this.keyHandler);
  },
  methods: {
    render() {
      const g = this.graph || { nodes: [], edges: [] };
      const selected = new Set(this.store.getSelectedNodes.value.map((n) => n.id));
      const selectedEdges = new Set(this.store.getSelectedEdges.value.map((e) => e.id));
      this.nodes = g.nodes.map((n) => ({
        id: n.id,
        type: "st",
        position: { x: n.x, y: n.y },
        selected: selected.has(n.id) || n.id === g.selected,
        data: n,
      }));
      this.edges = g.edges.map((e) => ({
        id: e.id,
        source: e.source,
        target: e.target,
        label: e.label,
        class: e.cls,
        selected: selectedEdges.has(e.id) || e.id === g.selected,
        markerEnd: MarkerType.ArrowClosed,
        labelBgPadding: [4, 2],
        labelBgBorderRadius: 3,
        interactionWidth: 16,
      }));
    },
    onInitialized() {
      if (this.fitted) return;
      this.fitted = true;
      if (this.graph && this.graph.layout) this.autoLayout();
      else this.fit();
    },
    onConnect(c) {
      this.$emit("connect", { source: c.source, target: c.target });
    },
    onDragStop(e) {
      const moved = (e.nodes && e.nodes.length ? e.nodes : [e.node]).map((n) => ({
        id: n.id, x: n.position.x, y: n.position.y,
      }));
      this.$emit("moved", { positions: moved });
    },
    onChanges(kind, changes) {
      // Delete/Backspace removes nodes and their edges in several change events: gather them into one
      const gone = changes.filter((c) => c.type === "remove").map((c) => c.id);
      if (!gone.length) return;
      if (!this.removed) {
        this.removed = { nodes: [], edges: [] };
        setTimeout(() => {
          this.$emit("remove", this.removed);
          this.removed = null;
        }, 0);
      }
      this.removed[kind].push(...gone);
    },
    onNodeClick(e) {
      this.$emit("select", { kind: "node", id: e.node.id, multi: !!(e.event && (e.event.shiftKey || e.event.ctrlKey)) });
    },
    onEdgeClick(e) {
      this.$emit("select", { kind: "edge", id: e.edge.id });
    },
    onKey(e) {
      const t = e.target;
      if (t && (t.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(t.tagName))) return;
      if (!(e.ctrlKey || e.metaKey)) return;
      const key = e.key.toLowerCase();
      if (key === "z" && !e.shiftKey) this.$emit("undo");
      else if (key === "y" || (key === "z" && e.shiftKey)) this.$emit("redo");
      else return;
      e.preventDefault();
    },
    miniColor(n) {
      return (n.data && n.data.color) || "#999";
    },
    // -- called from Python ------------------------------------------------------------------
    fit() {
      // after Vue has rendered new positions and the browser has measured them
      this.$nextTick(() => setTimeout(() => this.store.fitView({ padding: 0.15, duration: 200, maxZoom: 1.2 }), 50));
    },
    autoLayout() {
      const g = new dagre.graphlib.Graph();
      g.setGraph({ rankdir: "TB", nodesep: 40, ranksep: 70, edgesep: 20 });
      g.setDefaultEdgeLabel(() => ({}));
      for (const n of this.nodes) {
        const live = this.store.findNode(n.id);
        const dims = live && live.dimensions && live.dimensions.width ? live.dimensions : { width: NODE_W, height: NODE_H };
        g.setNode(n.id, { width: dims.width, height: dims.height });
      }
      for (const e of this.edges) g.setEdge(e.source, e.target);
      dagre.layout(g);
      const positions = this.nodes.map((n) => {
        const p = g.node(n.id);
        return { id: n.id, x: Math.round(p.x - p.width / 2), y: Math.round(p.y - p.height / 2) };
      });
      const byId = Object.fromEntries(positions.map((p) => [p.id, p]));
      this.nodes = this.nodes.map((n) => ({ ...n, position: { x: byId[n.id].x, y: byId[n.id].y } }));
      this.$emit("moved", { positions, layout: true });
      this.fit();
    },
    focus(id) {
      const node = this.store.findNode(id);
      if (!node) return;
      this.store.fitView({ nodes: [id], duration: 250, maxZoom: 1.2, padding: 0.6 });
    },
  },
};
