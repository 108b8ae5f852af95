// NiiVue wrapper: image + entropy heatmap as volumes, the label map as NiiVue's drawing layer
// (it starts as the model's mask; pen / fill / erase / undo edit it; it is saved on the image grid).

export const HEAT_COLORMAP = "warm";
const VIEWS = ["axial", "coronal", "sagittal", "multi", "render"];

/** A NiiVue draw colormap from the model card's classes ({index, name, color}). */
export function labelColormap(classes) {
  const cm = { R: [], G: [], B: [], A: [], I: [], labels: [] };
  for (const c of classes) {
    const [r, g, b] = c.color || [255, 0, 0];
    cm.I.push(c.index);
    cm.R.push(r);
    cm.G.push(g);
    cm.B.push(b);
    cm.A.push(c.index === 0 ? 0 : 255);
    cm.labels.push(c.name || String(c.index));
  }
  return cm;
}

export class Viewer {
  constructor(nvModule, canvas) {
    this.m = nvModule;
    this.canvas = canvas;
    this.nv = null;
    this.view = "multi";
    this.tool = "navigate";
    this.label = 1;
    this.heat = { visible: true, opacity: 0.6, min: 0.3 };
    this.labels = { mode: "fill", opacity: 0.5 };
    this.penSize = 3;
    this.dirty = false;
    this.onLocation = () => {};
    this.onDirty = () => {};
    this._mask = null;
  }

  async init() {
    const { Niivue, SHOW_RENDER } = this.m;
    this.nv = new Niivue({
      backColor: [0.06, 0.07, 0.09, 1],
      isColorbar: true,
      show3Dcrosshair: true,
      crosshairColor: [0.25, 0.85, 1, 0.9],
      crosshairWidth: 0.35,
      dragAndDropEnabled: false,
      multiplanarShowRender: SHOW_RENDER.ALWAYS,
      multiplanarEqualSize: true,
      viewModeHotKey: "",
      clipPlaneHotKey: "",
      cycleClipPlaneHotKey: "",
      loadingText: "",
      logLevel: "warn",
      isOrientationTextVisible: true,
      maxDrawUndoBitmaps: 32,
    });
    await this.nv.attachToCanvas(this.canvas);
    this.nv.onLocationChange = (loc) => this.onLocation(loc);
    this.nv.onDrawingChanged = (action) => {
      if (action !== "load") this._setDirty(true);
    };
    this.setView(this.view);
  }

  _setDirty(v) {
    this.dirty = v;
    this.onDirty(v);
  }

  /** Show a case: image (gray), entropy (heatmap, may be null), mask (drawing, may be null). */
  async load({ image, entropy, mask, classes }) {
    const nv = this.nv;
    const { NVImage } = this.m;
    nv.closeDrawing();
    const vols = [{ url: image, name: "image.nii.gz", colormap: "gray", colorbarVisible: false }];
    if (entropy) {
      vols.push({ url: entropy, name: "entropy.nii.gz", colormap: HEAT_COLORMAP, cal_min: this.heat.min,
                  cal_max: 1, opacity: this.heat.visible ? this.heat.opacity : 0, colorbarVisible: true });
    }
    await nv.loadVolumes(vols);
    nv.setDrawColormap(labelColormap(classes));
    this._mask = mask;
    if (mask) {
      const img = await NVImage.loadFromUrl({ url: mask.slice(0), name: "mask.nii.gz" });
      if (!nv.loadDrawing(img)) throw new Error("the mask's grid differs from the image's");
    } else {
      nv.createEmptyDrawing();
    }
    this.applyLabels();
    this.applyHeat();
    this.setTool(this.tool);
    this._setDirty(false);
    nv.drawScene();
  }

  /** Start again from the model's mask (drops every edit). */
  async resetDrawing() {
    if (!this._mask) {
      this.nv.createEmptyDrawing();
    } else {
      const img = await this.m.NVImage.loadFromUrl({ url: this._mask.slice(0), name: "mask.nii.gz" });
      this.nv.loadDrawing(img);
    }
    this.applyLabels();
    this._setDirty(false);
  }

  get heatVolume() {
    return this.nv.volumes.find((v) => v.name && v.name.startsWith("entropy")) || null;
  }

  applyHeat() {
    const v = this.heatVolume;
    if (!v) return;
    v.cal_min = this.heat.min;
    v.cal_max = 1;
    v.opacity = this.heat.visible ? this.heat.opacity : 0;
    v.colorbarVisible = this.heat.visible;
    this.nv.updateGLVolume();
  }

  setHeat(patch) {
    Object.assign(this.heat, patch);
    this.applyHeat();
  }

  applyLabels() {
    const nv = this.nv;
    const { mode, opacity } = this.labels;
    if (mode === "hidden") {
      nv.drawRimOpacity = -1;
      nv.setDrawOpacity(0);
    } else if (mode === "outline") {
      nv.drawRimOpacity = 1;
      nv.setDrawOpacity(0.001); // NiiVue paints the rim only where the drawing is visible at all
    } else {
      nv.drawRimOpacity = Math.min(1, opacity + 0.35);
      nv.setDrawOpacity(opacity);
    }
    nv.drawScene();
  }

  setLabels(patch) {
    Object.assign(this.labels, patch);
    this.applyLabels();
  }

  setView(view) {
    const { SLICE_TYPE } = this.m;
    const types = { axial: SLICE_TYPE.AXIAL, coronal: SLICE_TYPE.CORONAL, sagittal: SLICE_TYPE.SAGITTAL,
                    multi: SLICE_TYPE.MULTIPLANAR, render: SLICE_TYPE.RENDER };
    this.view = view;
    this.nv.setSliceType(types[view]);
  }

  nextView() {
    this.setView(VIEWS[(VIEWS.indexOf(this.view) + 1) % VIEWS.length]);
    return this.view;
  }

  /** navigate | pen | fill | erase */
  setTool(tool) {
    const nv = this.nv;
    this.tool = tool;
    nv.opts.penSize = this.penSize;
    if (tool === "navigate") {
      nv.setDrawingEnabled(false);
      return;
    }
    nv.setDrawingEnabled(true);
    if (tool === "erase") nv.setPenValue(0, false);
    else nv.setPenValue(this.label, tool === "fill");
    if (this.labels.mode === "hidden") this.setLabels({ mode: "fill" });
  }

  setLabel(label) {
    this.label = label;
    if (this.tool === "navigate" || this.tool === "erase") this.setTool("pen");
    else this.setTool(this.tool);
  }

  setPenSize(n) {
    this.penSize = n;
    this.nv.opts.penSize = n;
  }

  undo() {
    this.nv.drawUndo();
  }

  /** Move the crosshair (all three planes) to a RAS point in mm. */
  jumpToMM(mm) {
    const nv = this.nv;
    nv.scene.crosshairPos = nv.mm2frac([mm[0], mm[1], mm[2]]);
    nv.createOnLocationChange();
    nv.drawScene();
  }

  crosshair() {
    const nv = this.nv;
    const frac = Array.from(nv.scene.crosshairPos);
    const mm = Array.from(nv.frac2mm(nv.scene.crosshairPos)).slice(0, 3);
    return { frac, mm };
  }

  /** The label map as .nii.gz bytes on the image's own grid and affine (NiiVue undoes its RAS reslice). */
  async exportLabels() {
    const nv = this.nv;
    if (!nv.drawBitmap || !nv.back) throw new Error("nothing to save");
    return nv.back.saveToUint8Array("correction.nii.gz", nv.drawBitmap);
  }

  markSaved() {
    this._setDirty(false);
  }

  /** Compact state for the page and for tests. */
  state() {
    const nv = this.nv;
    return {
      volumes: nv.volumes.map((v) => ({ name: v.name, colormap: v.colormap, opacity: v.opacity,
                                        cal_min: v.cal_min, cal_max: v.cal_max, dims: Array.from(v.hdr.dims).slice(0, 4) })),
      crosshair: this.crosshair(),
      drawing: !!nv.drawBitmap,
      drawingEnabled: nv.opts.drawingEnabled,
      penValue: nv.opts.penValue,
      view: this.view,
      tool: this.tool,
      dirty: this.dirty,
    };
  }
}
