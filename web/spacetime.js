// Spacetime: show the text a node reports after it runs (the Prompt Expander's caption and its
// notes on words outside the embedded model's vocabulary, the Canvas's size/token/memory readout)
// in a read-only box on the node. The box is not a workflow value: it is never saved or sent.
// And a node that showed live previews while it ran and ends with a video (Long Video) shows the
// video: the front end draws a node's previews before its outputs and keeps them until the next run.
import { app } from "../../scripts/app.js";

const READOUT = "spacetime_readout";

function showReadout(node, lines) {
  let widget = node.widgets?.find((w) => w.name === READOUT);
  if (!widget) {
    const box = document.createElement("textarea");
    box.readOnly = true;
    box.className = "comfy-multiline-input";
    box.style.opacity = "0.85";
    box.title = "what this node reported when it last ran";
    widget = node.addDOMWidget(READOUT, "spacetime-readout", box, {
      serialize: false,
      getValue: () => box.value,
      setValue: (v) => { box.value = v; },
    });
    widget.serialize = false;
  }
  widget.element.value = lines.join("\n");
  const [w, h] = node.computeSize();
  node.setSize([Math.max(node.size[0], w), Math.max(node.size[1], h)]);
  node.setDirtyCanvas?.(true, true);
}

function dropPreviews(node) {
  const previews = app.nodePreviewImages;
  const key = node.graph && node.graph.isRootGraph === false ? `${node.graph.id}:${node.id}` : String(node.id);
  if (!previews?.[key]) return;
  for (const url of previews[key]) URL.revokeObjectURL(url);
  delete previews[key];
  node.preview = undefined;
  node.images = undefined;   // the next draw shows the outputs
  // and the canvas widget that drew the last preview goes, as the front end removes it
  const i = node.widgets?.findIndex((w) => w.name === "$$canvas-image-preview") ?? -1;
  if (i > -1) {
    node.widgets[i].onRemove?.();
    node.widgets.splice(i, 1);
  }
  node.imgs = [];
  node.setDirtyCanvas?.(true, true);
}

app.registerExtension({
  name: "Spacetime.Readout",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData.name.startsWith("Spacetime")) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output) {
      onExecuted?.apply(this, arguments);
      if (Array.isArray(output?.text) && output.text.length) showReadout(this, output.text.map(String));
      if (Array.isArray(output?.animated) && output.animated.some(Boolean)) dropPreviews(this);
    };
  },
});
