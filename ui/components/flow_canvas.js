// The canvas: vue-flow (from the "subterra-flow" bundle built in ui/frontend) on NiceGUI's own Vue.
// Python owns the flow. This component renders the `graph` prop and reports what the user did
// (connect, move, remove, select, add, copy/paste/duplicate, notes, groups, undo/redo, layout);
// Python applies it through engine.editing and sends the new graph back.
// Items that are not flow nodes have prefixed vue-flow ids: "note:<id>" (sticky notes) and
// "group:<id>" (group frames; a collapsed group is one card that edges of its nodes attach to).
import {
  VueFlow, Handle, Position, MarkerType, BaseEdge, Background, Controls, ControlButton, MiniMap, dagre, useVueFlow,
} from "subterra-flow";

const NODE_W = 210; // .st-node width (box-sizing: border-box), so dagre and the cards agree
const NODE_H = 72;
const READABLE_ZOOM = 0.75; // fit-to-screen never goes below: 14 px labels stay >= 10.5 px on screen
const FIT_MAX_ZOOM = 1.5;
const FIT_PAD = 30;
const GROUP_PAD = 22;
const GROUP_HEAD = 26;
const LABEL_H = 20;
const DIRS = { top: [0, -1], bottom: [0, 1], left: [-1, 0], right: [1, 0] };
const SHORTCUTS = [
  ["Ctrl+K", "find a node by id, label or prompt text"],
  ["Ctrl+C / Ctrl+V", "copy / paste the selected nodes with the edges between them"],
  ["Ctrl+D", "duplicate the selection"],
  ["Ctrl+G", "group the selected nodes in a labelled frame"],
  ["Delete / Backspace", "delete the selection"],
  ["Ctrl+Z / Ctrl+Shift+Z, Ctrl+Y", "undo / redo (also after an autosave or a reload)"],
  ["Shift + drag on empty canvas", "box selection; drag any selected node to move them all"],
  ["Ctrl/Shift + click", "add a node to the selection"],
  ["drag a handle into empty space", "add a connected node of a fitting kind"],
  ["right click", "the actions for a node, an edge, a group, a note or the canvas"],
  ["double click a note / group title", "edit its text"],
  ["mouse wheel / Ctrl + wheel", "scroll the canvas / zoom"],
  ["?", "this sheet"],
  ["Esc", "close a menu or dialog"],
];

export default {
  components: { VueFlow, Handle, BaseEdge, Background, Controls, ControlButton, MiniMap },
  props: { graph: Object, canvasId: String },
  setup(props) {
    // the same store the <VueFlow :id> below uses; gives the viewport, selection and measured sizes
    return { store: useVueFlow(props.canvasId), Position, SHORTCUTS };
  },
  data() {
    return {
      nodes: [], edges: [], removed: null, fitted: false, ready: false,
      labelAt: Object.freeze({}), menu: null, search: null, help: false,
      editingNote: null, editingGroup: null, dragGroup: null, connectFrom: null, connected: false, pointer: null,
    };
  },
  template: `
    <div class="st-canvas" style="width:100%;height:100%" :data-flow-version="graph && graph.version"
         :data-ready="ready ? 1 : 0" :data-direction="direction">
      <VueFlow :id="canvasId" :nodes="nodes" :edges="edges"
          :delete-key-code="['Delete', 'Backspace']" :multi-selection-key-code="['Shift', 'Control', 'Meta']"
          selection-key-code="Shift" :zoom-activation-key-code="['Control', 'Meta']" :pan-on-scroll="true"
          :min-zoom="0.05" :max-zoom="2.5" :snap-to-grid="true" :snap-grid="[10, 10]"
          @connect="onConnect" @connect-start="onConnectStart" @connect-end="onConnectEnd"
          @node-drag-start="onDragStart" @node-drag="onDrag" @node-drag-stop="onDragStop"
          @selection-drag-stop="onDragStop"
          @nodes-change="onChanges('nodes', $event)" @edges-change="onChanges('edges', $event)"
          @node-click="onNodeClick" @edge-click="onEdgeClick" @pane-click="onPaneClick"
          @node-context-menu="onNodeMenu" @edge-context-menu="onEdgeMenu" @pane-context-menu="onPaneMenu"
          @selection-context-menu="onSelectionMenu" @pane-mouse-move="onPointer"
          @viewport-change-start="onViewportStart" @viewport-change-end="onViewport" @nodes-initialized="onInitialized">
        <template #node-st="p">
          <div :class="p.data.cls" :style="p.data.style" :data-node="p.id" :title="p.data.tip">
            <Handle type="target" :position="inPos" />
            <div class="st-role">{{ p.data.roleText }}</div>
            <div class="st-label">{{ p.data.label }}</div>
            <div v-if="p.data.line" class="st-line">{{ p.data.line }}</div>
            <Handle v-if="p.data.role !== 'terminal'" type="source" :position="outPos" />
          </div>
        </template>
        <template #node-stnote="p">
          <div class="st-note" :data-note="p.data.id" @dblclick.stop="editNote(p.data.id)">
            <textarea v-if="editingNote === p.data.id" class="nodrag nowheel" :value="p.data.text"
                @keydown.stop @keydown.esc="$event.target.blur()"
                @blur="saveNote(p.data.id, $event.target.value)"></textarea>
            <template v-else>{{ p.data.text }}<span v-if="!p.data.text" class="st-empty">double-click to write</span></template>
          </div>
        </template>
        <template #node-stgroup="p">
          <div class="st-group" :class="{ 'st-collapsed': p.data.collapsed }" :data-group="p.data.id">
            <Handle v-if="p.data.collapsed" type="target" :position="inPos" :connectable="false" />
            <div class="st-group-head" @dblclick.stop="editGroup(p.data.id)">
              <button class="st-toggle nodrag" :title="p.data.collapsed ? 'Expand' : 'Collapse'"
                  @click.stop="toggleGroup(p.data)">{{ p.data.collapsed ? '▸' : '▾' }}</button>
              <input v-if="editingGroup === p.data.id" class="nodrag" :value="p.data.label"
                  @keydown.stop @keydown.enter="$event.target.blur()" @blur="renameGroup(p.data.id, $event.target.value)">
              <span v-else class="st-group-label">{{ p.data.label }}</span>
              <span class="st-count">{{ p.data.nodes.length }} nodes</span>
            </div>
            <Handle v-if="p.data.collapsed" type="source" :position="outPos" :connectable="false" />
          </div>
        </template>
        <template #edge-st="p">
          <BaseEdge v-bind="edgeProps(p)" />
        </template>
        <Background :gap="20" />
        <Controls :show-fit-view="false">
          <ControlButton title="fit to screen (readable)" class="st-fit" @click="fit">⛶</ControlButton>
          <ControlButton title="auto-layout" class="st-layout" @click="autoLayout()">⇅</ControlButton>
          <ControlButton title="find a node (Ctrl+K)" class="st-search-button" @click="openSearch">⌕</ControlButton>
          <ControlButton title="keyboard shortcuts (?)" class="st-help-button" @click="openHelp">?</ControlButton>
        </Controls>
        <MiniMap pannable zoomable :node-color="miniColor" />
      </VueFlow>
      <div v-if="menu" class="st-menu" :style="{ left: menu.x + 'px', top: menu.y + 'px' }" @contextmenu.prevent
           @mousedown.stop>
        <div v-if="menu.title" class="st-menu-title">{{ menu.title }}</div>
        <div v-for="it in menu.items" :key="it.key" class="st-item" :data-action="it.key" @click="runItem(it)">
          <span>{{ it.label }}</span><span class="st-key">{{ it.kbd || '' }}</span>
        </div>
      </div>
      <div v-if="search" class="st-overlay st-search" @mousedown.stop>
        <input ref="searchInput" :value="search.q" placeholder="Find a node by id, label or prompt text…"
            @input="search.q = $event.target.value; search.active = 0" @keydown.stop="onSearchKey">
        <div v-for="(h, i) in hits" :key="h.id" class="st-hit" :class="{ 'st-active': i === search.active }"
             :data-hit="h.id" @click="jump(h.id)">
          <b>{{ h.label }}</b> <span class="st-key">{{ h.id }}</span><small>{{ h.line }}</small>
        </div>
        <div v-if="search.q && !hits.length" class="st-key">no node matches</div>
      </div>
      <div v-if="help" class="st-overlay st-help" @mousedown.stop>
        <b>Keyboard and mouse</b>
        <table><tr v-for="s in SHORTCUTS" :key="s[0]"><td><kbd>{{ s[0] }}</kbd></td><td>{{ s[1] }}</td></tr></table>
      </div>
    </div>`,
  computed: {
    direction() {
      return (this.graph && this.graph.direction) || "TB";
    },
    inPos() {
      return this.direction === "LR" ? Position.Left : Position.Top;
    },
    outPos() {
      return this.direction === "LR" ? Position.Right : Position.Bottom;
    },
    hits() {
      const q = ((this.search && this.search.q) || "").trim().toLowerCase();
      if (!q || !this.graph) return [];
      const scored = [];
      for (const n of this.graph.nodes) {
        const id = n.id.toLowerCase();
        const label = (n.label || "").toLowerCase();
        const score = id === q ? 0 : label === q ? 1 : id.startsWith(q) || label.startsWith(q) ? 2
          : id.includes(q) || label.includes(q) ? 3 : (n.prompt || "").toLowerCase().includes(q) ? 4 : -1;
        if (score >= 0) scored.push([score, n]);
      }
      scored.sort((a, b) => a[0] - b[0]);
      return scored.slice(0, 12).map(([, n]) => n);
    },
  },
  watch: {
    graph() {
      this.render();
    },
  },
  mounted() {
    this.render();
    this.keyHandler = (e) => this.onKey(e);
    this.downHandler = () => this.closeMenu();
    window.addEventListener("keydown", this.keyHandler);
    window.addEventListener("mousedown", this.downHandler);
  },
  unmounted() {
    window.removeEventListener("keydown", this.keyHandler);
    window.removeEventListener("mousedown", this.downHandler);
  },
  methods: {
    // -- drawing -----------------------------------------------------------------------------------
    render() {
      const g = this.graph || { nodes: [], edges: [] };
      const sel = new Set(g.selectedIds && g.selectedIds.length ? g.selectedIds
        : this.store.getSelectedNodes.value.map((n) => n.id));
      const selectedEdges = new Set(this.store.getSelectedEdges.value.map((e) => e.id));
      const memberOf = {};
      for (const gr of g.groups || []) for (const m of gr.nodes) memberOf[m] = gr;
      const nodes = g.nodes.map((n) => ({
        id: n.id,
        type: "st",
        position: { x: n.x, y: n.y },
        selected: sel.has(n.id) || n.id === g.selected,
        hidden: !!(memberOf[n.id] && memberOf[n.id].collapsed),
        data: n,
      }));
      const byId = Object.fromEntries(nodes.map((n) => [n.id, n]));
      const groups = (g.groups || []).map((gr) => this.groupNode(gr, byId, sel));
      const notes = (g.notes || []).map((nt) => ({
        id: "note:" + nt.id, type: "stnote", position: { x: nt.x, y: nt.y }, selected: sel.has("note:" + nt.id), data: nt,
      }));
      this.nodes = [...groups, ...nodes, ...notes];
      const seen = new Set();
      const edges = [];
      for (const e of g.edges) {
        const gs = memberOf[e.source];
        const gt = memberOf[e.target];
        const source = gs && gs.collapsed ? "group:" + gs.id : e.source;
        const target = gt && gt.collapsed ? "group:" + gt.id : e.target;
        const rerouted = source !== e.source || target !== e.target;
        if (rerouted && (source === target || seen.has(source + ">" + target))) continue;
        seen.add(source + ">" + target);
        edges.push({
          id: e.id, type: "st", source, target, label: rerouted ? "" : e.label, class: e.cls,
          selected: selectedEdges.has(e.id) || e.id === g.selected, markerEnd: MarkerType.ArrowClosed,
          deletable: !rerouted,
        });
      }
      this.edges = edges;
      if (this.lastDirection && this.lastDirection !== this.direction) {
        // the handles moved to other sides of the cards: vue-flow must measure them again
        this.$nextTick(() => this.store.updateNodeInternals(this.nodes.map((n) => n.id)));
      }
      this.lastDirection = this.direction;
      this.measureSoon();
    },
    groupNode(gr, byId, sel) {
      const box = this.boxOf(gr.nodes.map((id) => byId[id]).filter(Boolean));
      const base = { id: "group:" + gr.id, type: "stgroup", data: gr, deletable: false, selected: sel.has("group:" + gr.id) };
      if (gr.collapsed) {
        return { ...base, position: { x: box.x, y: box.y }, style: { width: NODE_W + 20 + "px", height: "60px" } };
      }
      return {
        ...base, zIndex: -1,
        position: { x: box.x - GROUP_PAD, y: box.y - GROUP_PAD - GROUP_HEAD },
        style: { width: box.w + 2 * GROUP_PAD + "px", height: box.h + 2 * GROUP_PAD + GROUP_HEAD + "px" },
      };
    },
    boxOf(nodes) {
      let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
      for (const n of nodes) {
        const d = this.dims(n.id);
        x0 = Math.min(x0, n.position.x); y0 = Math.min(y0, n.position.y);
        x1 = Math.max(x1, n.position.x + d.width); y1 = Math.max(y1, n.position.y + d.height);
      }
      if (x0 === Infinity) return { x: 0, y: 0, w: NODE_W, h: NODE_H };
      return { x: x0, y: y0, w: x1 - x0, h: y1 - y0 };
    },
    dims(id) {
      const live = this.store.findNode(id);
      return live && live.dimensions && live.dimensions.width ? live.dimensions : { width: NODE_W, height: NODE_H };
    },
    measureSoon() {
      // node sizes are known once the browser has laid the cards out: then groups and edge labels settle
      clearTimeout(this.measureTimer);
      this.measureTimer = setTimeout(() => {
        this.placeLabels();
        const g = this.graph || {};
        if ((g.groups || []).length) {
          const byId = Object.fromEntries(this.nodes.filter((n) => n.type === "st").map((n) => [n.id, n]));
          for (const gr of g.groups) {
            const fresh = this.groupNode(gr, byId, new Set());
            this.store.updateNode(fresh.id, { position: fresh.position, style: fresh.style });
          }
        }
      }, 60);
    },
    edgeProps(p) {
      // a cubic curve leaving/entering along the handles; the condition sits at the point of the curve
      // that placeLabels chose (it follows the curve while nodes are dragged)
      const curve = bezier(p.sourceX, p.sourceY, p.targetX, p.targetY, p.sourcePosition, p.targetPosition);
      const spot = this.labelAt[p.id] || { t: 0.5, dx: 0, dy: 0 };
      const [cx, cy] = curve.at(spot.t);
      const [lx, ly] = [cx + spot.dx, cy + spot.dy];
      return {
        id: p.id, path: curve.path, markerEnd: p.markerEnd,
        label: p.label, labelX: lx, labelY: ly, labelShowBg: true, labelBgPadding: [5, 3], labelBgBorderRadius: 3,
        interactionWidth: 16,
      };
    },
    placeLabels() {
      // one pass over all conditions: each goes to the first point of its curve that covers no card and
      // no condition placed before it (the least crowded one when none is free)
      const cards = [];
      const box = {};
      for (const n of this.store.getNodes.value) {
        if (n.hidden || n.type === "stgroup") continue;
        const d = n.dimensions.width ? n.dimensions : { width: NODE_W, height: NODE_H };
        box[n.id] = { x: n.computedPosition.x, y: n.computedPosition.y, w: d.width, h: d.height };
        if (n.type === "st" || n.type === "stnote") cards.push(box[n.id]);
      }
      const lr = this.direction === "LR";
      const placed = [];
      const labelAt = {};
      for (const e of this.edges) {
        const s = box[e.source], t = box[e.target];
        if (!e.label || !s || !t) continue;
        const curve = lr
          ? bezier(s.x + s.w, s.y + s.h / 2, t.x, t.y + t.h / 2, "right", "left")
          : bezier(s.x + s.w / 2, s.y + s.h, t.x + t.w / 2, t.y, "bottom", "top");
        const w = labelWidth(e.label) + 4, h = LABEL_H + 2;
        // along the curve first; where it is crowded (loop-back edges), beside it
        const side = lr ? [0, h + 4] : [w / 2 + 14, 0];
        let best = null;
        for (const [t, k] of LABEL_SPOTS) {
          const [cx, cy] = curve.at(t);
          const [x, y] = [cx + k * side[0], cy + k * side[1]];
          const r = { x: x - w / 2, y: y - h / 2, w, h };
          const hits = count(cards, r) * 3 + count(placed, r);
          if (!best || hits < best.hits) best = { t, dx: x - cx, dy: y - cy, r, hits };
          if (!hits) break;
        }
        labelAt[e.id] = { t: best.t, dx: best.dx, dy: best.dy };
        placed.push(best.r);
      }
      this.labelAt = Object.freeze(labelAt);
    },
    miniColor(n) {
      return (n.data && n.data.color) || (n.type === "stnote" ? "#facc15" : "#cbd5e1");
    },
    // -- vue-flow events -----------------------------------------------------------------------------
    onInitialized() {
      this.measureSoon();
      if (this.fitted) return;
      this.fitted = true;
      if (this.graph && this.graph.layout) this.autoLayout();
      else this.fit();
    },
    onConnectStart(e) {
      this.connectFrom = { nodeId: e.nodeId, handleType: e.handleType };
      this.connected = false;
    },
    onConnect(c) {
      this.connected = true;
      this.$emit("connect", { source: c.source, target: c.target });
    },
    onConnectEnd(ev) {
      // released over empty canvas without connecting: offer a connected node of a fitting kind
      const from = this.connectFrom;
      this.connectFrom = null;
      if (!from || !ev) return;
      setTimeout(() => {
        const t = ev.target;
        if (this.connected || !t || !t.closest || !t.closest(".vue-flow__pane") || t.closest(".vue-flow__node")) return;
        const node = this.graph.nodes.find((n) => n.id === from.nodeId);
        if (!node) return;
        const incoming = from.handleType === "target";
        const roles = incoming ? this.graph.next._in : this.graph.next[node.role] || [];
        const pt = this.toFlow(ev);
        const at = { x: pt.x - NODE_W / 2, y: pt.y - (this.direction === "LR" ? NODE_H / 2 : 0) };
        this.openMenu(ev, incoming ? `Add a node leading to ${node.label}` : `Add after ${node.label}`,
          roles.map((r) => ({
            key: "connect-" + r, label: this.graph.roleNames[r],
            run: () => this.$emit("add", { role: r, ...at, from: node.id, incoming }),
          })));
      }, 0);
    },
    onDragStart(e) {
      const g = e.node.id.startsWith("group:") && this.groupOf(e.node.id);
      if (!g) return;
      const start = {};
      for (const id of g.nodes) {
        const n = this.store.findNode(id);
        if (n) start[id] = { ...n.position };
      }
      this.dragGroup = { id: e.node.id, from: { ...e.node.position }, start };
    },
    onDrag(e) {
      // an open group frame carries its nodes along while it is dragged
      const dg = this.dragGroup;
      if (!dg || e.node.id !== dg.id || this.groupOf(dg.id).collapsed) return;
      const dx = e.node.position.x - dg.from.x, dy = e.node.position.y - dg.from.y;
      for (const [id, p] of Object.entries(dg.start)) this.store.updateNode(id, { position: { x: p.x + dx, y: p.y + dy } });
    },
    onDragStop(e) {
      const moved = e.nodes && e.nodes.length ? e.nodes : [e.node];
      const positions = {};
      const notes = [];
      for (const n of moved) {
        if (n.id.startsWith("note:")) notes.push({ id: n.id.slice(5), x: n.position.x, y: n.position.y });
        else if (!n.id.startsWith("group:")) positions[n.id] = { id: n.id, x: n.position.x, y: n.position.y };
      }
      const dg = this.dragGroup;
      this.dragGroup = null;
      const gnode = dg && moved.find((n) => n.id === dg.id);
      if (gnode) {
        const dx = gnode.position.x - dg.from.x, dy = gnode.position.y - dg.from.y;
        for (const [id, p] of Object.entries(dg.start)) {
          if (!positions[id]) positions[id] = { id, x: p.x + dx, y: p.y + dy };
        }
      }
      this.$emit("moved", { positions: Object.values(positions), notes });
      this.measureSoon();
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
      if (e.node.type !== "st") return;
      this.$emit("select", { kind: "node", id: e.node.id, multi: !!(e.event && (e.event.shiftKey || e.event.ctrlKey)) });
    },
    onEdgeClick(e) {
      this.$emit("select", { kind: "edge", id: e.edge.id });
    },
    onPaneClick() {
      this.closeMenu();
      this.$emit("select", { kind: null, id: null });
    },
    onViewportStart() {
      // while the view moves, the cards are one composited layer that is only shifted, not repainted
      // (3x shorter frames with 200 nodes); afterwards text is rasterized sharp at the new zoom again
      clearTimeout(this.movingTimer);
      const pane = this.$el.querySelector(".vue-flow__transformationpane");
      if (pane) pane.style.willChange = "transform";
    },
    onViewport(v) {
      // not reactive on purpose: a re-render of this component re-renders every card, and panning
      // ends a viewport change on every wheel step
      this.$el.dataset.zoom = v.zoom.toFixed(3);
      clearTimeout(this.movingTimer);
      this.movingTimer = setTimeout(() => {
        const pane = this.$el.querySelector(".vue-flow__transformationpane");
        if (pane) pane.style.willChange = "";
      }, 400);
    },
    onPointer(ev) {
      this.pointer = this.toFlow(ev);
    },
    // -- context menus -----------------------------------------------------------------------------------
    onNodeMenu({ event, node }) {
      event.preventDefault();
      const id = node.id;
      if (id.startsWith("note:")) {
        return this.openMenu(event, "Note", [
          { key: "edit-note", label: "Edit text", run: () => this.editNote(id.slice(5)) },
          { key: "delete", label: "Delete note", kbd: "Del", run: () => this.$emit("remove", { nodes: [id], edges: [] }) },
        ]);
      }
      if (id.startsWith("group:")) {
        const g = this.groupOf(id);
        return this.openMenu(event, `Group · ${g.label}`, [
          { key: "toggle-group", label: g.collapsed ? "Expand" : "Collapse", run: () => this.toggleGroup(g) },
          { key: "rename-group", label: "Rename", run: () => this.editGroup(g.id) },
          { key: "select-group", label: "Select its nodes", run: () => this.selectIds(g.nodes) },
          { key: "ungroup", label: "Ungroup (keep the nodes)", run: () => this.$emit("ungroup", { id: g.id }) },
        ]);
      }
      if (!node.selected) this.selectIds([id]);
      const ids = this.selectedIds();
      const data = node.data;
      const items = [
        { key: "duplicate", label: "Duplicate", kbd: "Ctrl+D", run: () => this.$emit("duplicate", { ids }) },
        { key: "copy", label: "Copy", kbd: "Ctrl+C", run: () => this.$emit("copy", { ids }) },
      ];
      for (const r of (this.graph.next[data.role] || []).slice(0, 3)) {
        const p = this.besidePosition(node);
        items.push({
          key: "after-" + r, label: `Add ${this.graph.roleNames[r].toLowerCase()} after`,
          run: () => this.$emit("add", { role: r, ...p, from: id, incoming: false }),
        });
      }
      if (ids.length > 1) items.push({ key: "group", label: "Group selection", kbd: "Ctrl+G", run: () => this.$emit("group", { ids }) });
      if (ids.length === 1) items.push({ key: "make-start", label: "Make start", run: () => this.$emit("start", { id }) });
      items.push({ key: "delete", label: ids.length > 1 ? `Delete ${ids.length} nodes` : "Delete", kbd: "Del",
        run: () => this.$emit("remove", { nodes: ids, edges: [] }) });
      this.openMenu(event, ids.length > 1 ? `${ids.length} nodes` : data.label, items);
    },
    onSelectionMenu({ event, nodes }) {
      event.preventDefault();
      if (nodes && nodes.length) this.onNodeMenu({ event, node: nodes.find((n) => n.type === "st") || nodes[0] });
    },
    onEdgeMenu({ event, edge }) {
      event.preventDefault();
      this.openMenu(event, "Edge", [
        { key: "edit-edge", label: "Edit condition", run: () => this.$emit("select", { kind: "edge", id: edge.id }) },
        { key: "delete", label: "Delete edge", kbd: "Del", run: () => this.$emit("remove", { nodes: [], edges: [edge.id] }) },
      ]);
    },
    onPaneMenu(event) {
      event.preventDefault();
      const pt = this.toFlow(event);
      const items = ["agent", "user", "decision", "terminal"].map((r) => ({
        key: "add-" + r, label: `Add ${this.graph.roleNames[r].toLowerCase()} here`,
        run: () => this.$emit("add", { role: r, x: pt.x, y: pt.y }),
      }));
      items.push({ key: "add-note", label: "Add a sticky note here", run: () => this.$emit("note", { x: pt.x, y: pt.y }) });
      items.push({ key: "paste", label: "Paste here", kbd: "Ctrl+V", run: () => this.$emit("paste", pt) });
      items.push({ key: "layout", label: "Auto-layout", run: () => this.autoLayout() });
      items.push({ key: "fit", label: "Fit to screen", run: () => this.fit() });
      this.openMenu(event, "Canvas", items);
    },
    openMenu(ev, title, items) {
      const box = this.$el.getBoundingClientRect();
      const pt = clientPoint(ev);
      this.menu = { x: pt.x - box.left, y: pt.y - box.top, title, items };
    },
    runItem(it) {
      this.menu = null;
      it.run();
    },
    closeMenu() {
      this.menu = null;
    },
    // -- notes and groups ------------------------------------------------------------------------------------
    editNote(id) {
      this.editingNote = id;
      this.$nextTick(() => {
        const ta = this.$el.querySelector(`[data-note="${id}"] textarea`);
        if (ta) ta.focus();
      });
    },
    saveNote(id, text) {
      this.editingNote = null;
      this.$emit("note", { id, text });
    },
    editGroup(id) {
      this.editingGroup = id;
      this.$nextTick(() => {
        const input = this.$el.querySelector(`[data-group="${id}"] input`);
        if (input) input.select();
      });
    },
    renameGroup(id, label) {
      this.editingGroup = null;
      this.$emit("group", { id, label });
    },
    toggleGroup(g) {
      this.$emit("group", { id: g.id, collapsed: !g.collapsed });
    },
    groupOf(vfId) {
      const id = vfId.startsWith("group:") ? vfId.slice(6) : vfId;
      return ((this.graph && this.graph.groups) || []).find((g) => g.id === id);
    },
    // -- keyboard ----------------------------------------------------------------------------------------
    onKey(e) {
      const t = e.target;
      if (t && (t.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(t.tagName))) return;
      if (e.key === "Escape") {
        this.menu = null;
        this.search = null;
        this.help = false;
        return;
      }
      if (e.key === "?" && !e.ctrlKey && !e.metaKey) {
        this.help = !this.help;
        e.preventDefault();
        return;
      }
      if (!(e.ctrlKey || e.metaKey)) return;
      const key = e.key.toLowerCase();
      const ids = this.selectedIds();
      if (key === "z" && !e.shiftKey) this.$emit("undo");
      else if (key === "y" || (key === "z" && e.shiftKey)) this.$emit("redo");
      else if (key === "c" && ids.length) this.$emit("copy", { ids });
      else if (key === "v") this.$emit("paste", this.pointer || this.viewCenter());
      else if (key === "d" && ids.length) this.$emit("duplicate", { ids });
      else if (key === "g" && ids.length) this.$emit("group", { ids });
      else if (key === "k") this.openSearch();
      else return;
      e.preventDefault();
    },
    onSearchKey(e) {
      const n = this.hits.length;
      if (e.key === "ArrowDown") this.search.active = (this.search.active + 1) % Math.max(n, 1);
      else if (e.key === "ArrowUp") this.search.active = (this.search.active - 1 + n) % Math.max(n, 1);
      else if (e.key === "Enter" && n) this.jump(this.hits[this.search.active].id);
      else if (e.key === "Escape") this.search = null;
      else return;
      e.preventDefault();
    },
    jump(id) {
      this.search = null;
      const g = ((this.graph && this.graph.groups) || []).find((gr) => gr.collapsed && gr.nodes.includes(id));
      if (g) this.$emit("group", { id: g.id, collapsed: false });
      this.selectIds([id]);
      this.$emit("select", { kind: "node", id });
      setTimeout(() => this.focus(id), g ? 300 : 0);
    },
    // -- helpers -------------------------------------------------------------------------------------------
    selectedIds() {
      // flow nodes only; a selected group frame stands for its nodes
      const ids = new Set();
      for (const n of this.store.getSelectedNodes.value) {
        if (n.type === "st") ids.add(n.id);
        else if (n.type === "stgroup") for (const m of this.groupOf(n.id).nodes) ids.add(m);
      }
      return [...ids];
    },
    selectIds(ids) {
      this.store.removeSelectedElements();
      this.store.addSelectedNodes(ids.map((id) => this.store.findNode(id)).filter(Boolean));
    },
    toFlow(ev) {
      const p = clientPoint(ev);
      return this.store.screenToFlowCoordinate({ x: p.x, y: p.y });
    },
    viewCenter() {
      const box = this.$el.getBoundingClientRect();
      return this.store.screenToFlowCoordinate({ x: box.left + box.width / 2, y: box.top + box.height / 2 });
    },
    besidePosition(node) {
      const d = this.dims(node.id);
      return this.direction === "LR"
        ? { x: node.position.x + d.width + 90, y: node.position.y }
        : { x: node.position.x, y: node.position.y + d.height + 80 };
    },
    // -- called from Python ------------------------------------------------------------------------
    fit(direction) {
      // after Vue has rendered new positions and the browser has measured them
      const dir = typeof direction === "string" ? direction : this.direction;
      this.$nextTick(() => setTimeout(() => this.fitReadable(dir), 60));
    },
    fitReadable(dir) {
      // like fitView, but never below READABLE_ZOOM: a flow too big to fit readably is shown from its
      // start (top for top-down, left for left-right) and the rest is a scroll away
      const shown = this.store.getNodes.value.filter((n) => !n.hidden && n.type !== "stgroup");
      const { width: W, height: H } = this.store.dimensions.value;
      if (!shown.length || !W || !H) return;
      let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
      for (const n of shown) {
        const d = n.dimensions.width ? n.dimensions : { width: NODE_W, height: NODE_H };
        x0 = Math.min(x0, n.computedPosition.x); y0 = Math.min(y0, n.computedPosition.y);
        x1 = Math.max(x1, n.computedPosition.x + d.width); y1 = Math.max(y1, n.computedPosition.y + d.height);
      }
      const bw = x1 - x0, bh = y1 - y0;
      let z = Math.min((W - 2 * FIT_PAD) / bw, (H - 2 * FIT_PAD) / bh, FIT_MAX_ZOOM);
      let x = (W - bw * z) / 2 - x0 * z;
      let y = (H - bh * z) / 2 - y0 * z;
      if (z < READABLE_ZOOM) {
        z = READABLE_ZOOM;
        const start = shown.find((n) => n.data && n.data.cls && n.data.cls.includes("st-start")) || shown[0];
        const sx = start.computedPosition.x + NODE_W / 2, sy = start.computedPosition.y + NODE_H / 2;
        // centre the start node on the axis that overflows, but never past the flow's edge
        x = bw * z <= W - 2 * FIT_PAD ? (W - bw * z) / 2 - x0 * z : clamp(W / 2 - sx * z, W - FIT_PAD - x1 * z, FIT_PAD - x0 * z);
        y = bh * z <= H - 2 * FIT_PAD ? (H - bh * z) / 2 - y0 * z : clamp(H / 2 - sy * z, H - FIT_PAD - y1 * z, FIT_PAD - y0 * z);
        if (dir === "TB" && bh * z > H - 2 * FIT_PAD) y = FIT_PAD - y0 * z;
        if (dir === "LR" && bw * z > W - 2 * FIT_PAD) x = FIT_PAD + 40 - x0 * z; // clear of the controls
      }
      this.store.setViewport({ x, y, zoom: z }, { duration: 150 });
      setTimeout(() => {
        this.onViewport(this.store.viewport.value);
        if (!this.ready) this.$el.dataset.readyAt = performance.now().toFixed(0); // for the open-time test
        this.ready = true;
      }, 200);
    },
    autoLayout(direction) {
      const dir = direction || this.direction;
      const g = new dagre.graphlib.Graph();
      g.setGraph({ rankdir: dir, nodesep: dir === "LR" ? 30 : 45, ranksep: dir === "LR" ? 70 : 50, edgesep: 20 });
      g.setDefaultEdgeLabel(() => ({}));
      const flowNodes = this.graph.nodes;
      for (const n of flowNodes) {
        const d = this.dims(n.id);
        g.setNode(n.id, { width: d.width, height: d.height });
      }
      // conditions are laid out as dagre edge labels, so each gets room of its own between the ranks
      for (const e of this.graph.edges) {
        g.setEdge(e.source, e.target, e.label ? { width: labelWidth(e.label) + 10, height: LABEL_H + 6, labelpos: "c" } : {});
      }
      dagre.layout(g);
      const positions = flowNodes.map((n) => {
        const p = g.node(n.id);
        return { id: n.id, x: Math.round(p.x - p.width / 2), y: Math.round(p.y - p.height / 2) };
      });
      const byId = Object.fromEntries(positions.map((p) => [p.id, p]));
      this.nodes = this.nodes.map((n) => (byId[n.id] ? { ...n, position: { x: byId[n.id].x, y: byId[n.id].y } } : n));
      this.$emit("moved", { positions, layout: true, direction: dir });
      this.measureSoon();
      this.fit(dir);
    },
    focus(id) {
      const node = this.store.findNode(id);
      if (!node) return;
      this.store.fitView({ nodes: [id], duration: 250, maxZoom: 1.2, padding: 0.6 });
    },
    openSearch() {
      this.help = false;
      this.search = { q: "", active: 0 };
      this.$nextTick(() => this.$refs.searchInput && this.$refs.searchInput.focus());
    },
    openHelp() {
      this.search = null;
      this.help = true;
    },
  },
};

// where a condition may sit: [t along the curve, steps beside it]
const LABEL_SPOTS = [
  ...[0.5, 0.42, 0.58, 0.34, 0.66, 0.26, 0.74, 0.18, 0.82].map((t) => [t, 0]),
  ...[1, -1, 2, -2, 3, -3].flatMap((k) => [0.5, 0.35, 0.65, 0.2, 0.8].map((t) => [t, k])),
];

function bezier(sx, sy, tx, ty, sourcePos, targetPos) {
  const ds = DIRS[sourcePos] || DIRS.bottom;
  const dt = DIRS[targetPos] || DIRS.top;
  const c = Math.max(30, Math.min(160, Math.hypot(tx - sx, ty - sy) * 0.4));
  const c1 = [sx + ds[0] * c, sy + ds[1] * c];
  const c2 = [tx + dt[0] * c, ty + dt[1] * c];
  return {
    path: `M${sx},${sy} C${c1[0]},${c1[1]} ${c2[0]},${c2[1]} ${tx},${ty}`,
    at(t) {
      const u = 1 - t;
      const a = u * u * u, b = 3 * u * u * t, d = 3 * u * t * t, e = t * t * t;
      return [a * sx + b * c1[0] + d * c2[0] + e * tx, a * sy + b * c1[1] + d * c2[1] + e * ty];
    },
  };
}

function count(rects, r) {
  let k = 0;
  for (const q of rects) if (r.x < q.x + q.w && r.x + r.w > q.x && r.y < q.y + q.h && r.y + r.h > q.y) k++;
  return k;
}

function labelWidth(text) {
  return Math.min(300, 12 + text.length * 6.6); // 12 px text: ~6.6 px a character
}

function clientPoint(ev) {
  const t = ev.changedTouches && ev.changedTouches[0];
  return t ? { x: t.clientX, y: t.clientY } : { x: ev.clientX, y: ev.clientY };
}

function clamp(v, lo, hi) {
  return Math.max(lo, Math.min(hi, v));
}
