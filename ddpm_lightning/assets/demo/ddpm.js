// The demo page of ddpm_lightning: DDIM, DDPM, multistep consistency sampling and the flow
// samplers of an exported denoiser (model.onnx + model.json) with onnxruntime-web, in a Web Worker, and the page around
// it, with a drawing pad whose drawing the model completes, cleans up or refills.
//
// The sampler is a port of ddpm_lightning/diffusion/samplers.py (timestep_sequence,
// Sampler.predict, Sampler.guidance_scale_at, DDIMSampler.step, DDPMSampler.step),
// consistency_sampler.py (ConsistencySampler.steps and .step), flow_samplers.py
// (FlowEulerSampler, FlowHeunSampler) and guidance.py
// (guided_output, one call with γ for a student of distilled guidance), denoiser.py
// (Denoiser.autoguided: a model folder's guide, exported as guide.onnx), the edits of
// ddpm_lightning/editing (masks.py, inpaint.py, sdedit.py, the draws of sampling.py); for the
// same starting noise (and per-step noise) they give the Python
// images, checked by tests/test_demo.py (in Node, with a closed-form denoiser) and
// tests/test_demo_browser.py and tests/test_demo_edit_browser.py (in Chromium, with the ONNX
// models). This one file is the page's script, the worker's script (the
// page starts it as a module worker) and, in Node, a plain module of the sampler's functions.

const ORT_MODULE = './ort/ort.wasm.bundle.min.mjs';
const NUM_SAMPLES = 8;
// The first look the page generates on load: DDIM (or the model's consistency or flow
// sampler) with at most this many steps.
const PREVIEW_STEPS = 10;
// Tiles a row holds before the samples take two or more rows: one of each of 10 classes fits.
const MAX_COLUMNS = 10;
// Karras et al. 2022 (EDM), Table 1: σ_max of the ρ-spaced grid and its exponent ρ.
const KARRAS_SIGMA_MAX = 80;
const KARRAS_RHO = 7;
// The image shape (C, H, W) of records that do not name theirs: MNIST's.
const DEFAULT_SHAPE = [1, 32, 32];
// CSS widths that the x_t and x̂₀ canvases and the samples' tiles approach by whole-number zooms.
const PROCESS_WIDTH = 192;
const TILE_WIDTH = 96;
// Brush radii of the drawing pad, in pixels of a 32-pixel-wide image (scaled with the width).
const BRUSH_RADII = { pen: 1.5, eraser: 2.5, region: 3 };
// Updates per RePaint stretch (edit.jump_length's default in inpaint.py).
const JUMP_LENGTH = 10;
// The spacing of consistency sampling for records that name none (ConsistencySampler's default).
const CONSISTENCY_SPACING = 'trailing';
// The samplers of the flow path (flow_samplers.py), for models of diffusion.objective=flow.
const FLOW_SAMPLERS = ['flow_euler', 'flow_heun'];

// ---- Images: shape and pixels -------------------------------------------------------------

/** The model's image shape [C, H, W] from its record (model.json's data_shape, 1×32×32 when it
 * has none): 1 channel (grey) or 3 (RGB), any H×W. */
export function imageShape(record) {
  const shape = record.data_shape ?? DEFAULT_SHAPE;
  if (shape.length !== 3 || (shape[0] !== 1 && shape[0] !== 3)) {
    throw new Error(`the page draws images of 1 (grey) or 3 (RGB) channels, not of shape ${shape.join('×')}`);
  }
  return shape;
}

/** Numbers in one image of `shape`. */
function imageSize(shape) {
  return shape.reduce((a, b) => a * b, 1);
}

/** RGBA bytes (H·W·4, row by row) of image `index` of `images` (flat N×C×H×W in [-1, 1],
 * mapped to [0, 255]): channels 0, 1, 2 as red, green, blue, or the one channel as grey. */
export function rgba(images, shape, index = 0) {
  const [channels, height, width] = shape;
  const area = height * width;
  const offset = index * channels * area;
  const bytes = new Uint8ClampedArray(4 * area).fill(255);
  for (let p = 0; p < area; p++) {
    for (let ch = 0; ch < 3; ch++) {
      const value = images[offset + (channels === 3 ? ch * area : 0) + p];
      bytes[4 * p + ch] = Math.round((Math.min(1, Math.max(-1, value)) + 1) * 127.5);
    }
  }
  return bytes;
}

/** The CSS width, in px, of `width` image pixels zoomed by the whole number (at least 1) that
 * comes nearest to `target`: pixelated zooms keep every pixel the same size. */
export function zoomedWidth(width, target) {
  return width * Math.max(1, Math.round(target / width));
}

// ---- Timesteps: timestep_sequence of samplers.py ------------------------------------------

/** Python's round(): a half goes to the even neighbour (for v ≥ 0). */
export function roundHalfEven(v) {
  const r = Math.round(v);
  return v % 1 === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** torch.linspace in float64: the first half counted from `start`, the rest from `end`. */
export function linspace(start, end, n) {
  if (n === 1) return [start];
  const step = (end - start) / (n - 1);
  const half = Math.floor(n / 2);
  return Array.from({ length: n }, (_, i) => (i < half ? start + step * i : end - step * (n - 1 - i)));
}

/** Index of the smallest |values[i] − target| (the first one on ties, as torch.argmin). */
function nearest(values, target) {
  let best = 0;
  for (let i = 1; i < values.length; i++) {
    if (Math.abs(values[i] - target) < Math.abs(values[best] - target)) best = i;
  }
  return best;
}

/** σ_t = √((1−ᾱ_t)/ᾱ_t), the noise level of x_t/√ᾱ_t. */
function sigmas(alphasCumprod) {
  return alphasCumprod.map((a) => Math.sqrt((1 - a) / a));
}

/** Ascending timesteps nearest in log σ to EDM's ρ = 7 grid; the largest is T−1. */
function karrasGrid(alphasCumprod, n) {
  const all = sigmas(alphasCumprod);
  const logSigmas = all.map(Math.log);
  const low = all[0] ** (1 / KARRAS_RHO);
  const high = Math.min(KARRAS_SIGMA_MAX, all[all.length - 1]) ** (1 / KARRAS_RHO);
  const grid = linspace(0, 1, n).map((r) => (high + r * (low - high)) ** KARRAS_RHO);
  const ascending = grid.map((sigma) => nearest(logSigmas, Math.log(sigma))).reverse();
  ascending[n - 1] = alphasCumprod.length - 1;
  return ascending;
}

/** Ascending proposals made distinct within [0, T−1] (repeats moved up), then reversed. */
function strictlyDecreasing(ascending, T) {
  const steps = [...ascending];
  const n = steps.length;
  for (let i = 1; i < n; i++) steps[i] = Math.max(steps[i], steps[i - 1] + 1);
  for (let i = n - 1; i >= 0; i--) steps[i] = Math.min(steps[i], T - n + i);
  return steps.reverse();
}

/** The `n` timesteps DDIM visits, strictly decreasing from T−1 (see timestep_sequence). */
export function timestepSequence(alphasCumprod, n, spacing = 'uniform') {
  const T = alphasCumprod.length;
  if (!(Number.isInteger(n) && n >= 1 && n <= T)) throw new Error(`steps must be between 1 and ${T}`);
  if (n === 1) return [T - 1];
  let ascending;
  if (spacing === 'uniform') {
    ascending = Array.from({ length: n }, (_, i) => roundHalfEven((i * (T - 1)) / (n - 1)));
  } else if (spacing === 'quadratic') {
    ascending = Array.from({ length: n }, (_, i) => roundHalfEven(((i * Math.sqrt(T - 1)) / (n - 1)) ** 2));
  } else if (spacing === 'trailing') {
    ascending = Array.from({ length: n }, (_, i) => roundHalfEven(T - (i * T) / n) - 1).reverse();
  } else if (spacing === 'karras') {
    ascending = karrasGrid(alphasCumprod, n);
  } else if (spacing === 'logsnr') {
    const lambda = alphasCumprod.map((a) => 0.5 * (Math.log(a) - Math.log1p(-a)));
    ascending = linspace(lambda[0], lambda[T - 1], n).map((value) => nearest(lambda, value));
  } else {
    throw new Error(`unknown spacing ${spacing}`);
  }
  return strictlyDecreasing(ascending, T);
}

// ---- One step: Sampler.predict, DDIMSampler.step, DDPMSampler.step, ConsistencySampler.step -

/** Whether the record's model predicts the flow path's velocity (diffusion.objective=flow). */
export function isFlow(record) {
  return record.objective === 'flow';
}

/** The flow path's time s_t = (t + 1)/T, 0 for t = −1, the clean image (flow.py). */
function flowTime(record, t) {
  return (t + 1) / record.num_timesteps;
}

/** (a, b) with x_t = a x₀ + b ε: (√ᾱ_t, √(1−ᾱ_t)), or (1 − s_t, s_t) on the flow path. */
function pathCoefficients(record, t) {
  if (isFlow(record)) {
    const s = flowTime(record, t);
    return [1 - s, s];
  }
  return [record.schedule.sqrt_alphas_cumprod[t], record.schedule.sqrt_one_minus_alphas_cumprod[t]];
}

/** σ_t, the noise level of x_t/a_t: √((1−ᾱ_t)/ᾱ_t), or s_t/(1 − s_t) on the flow path (∞ at
 * t = T−1), as Denoiser.sigma_values. */
function noiseLevel(record, t) {
  if (isFlow(record)) return flowTime(record, t) / (1 - flowTime(record, t));
  const a = record.schedule.alphas_cumprod[t];
  return Math.sqrt((1 - a) / a);
}

/** (x̂₀, ε̂) of x̂₀ at x_t: ε̂ = (x_t − a_t x̂₀)/b_t (Denoiser.eps_from_x0), x̂₀ clipped to
 * [-1, 1] first when `clip`. */
function fromX0(record, t, x, x0, clip) {
  const [a, b] = pathCoefficients(record, t);
  const clippedX0 = clip ? x0.map((v) => Math.min(1, Math.max(-1, v))) : x0;
  return { x0: clippedX0, eps: clippedX0.map((v, k) => (x[k] - a * v) / b) };
}

/** (x̂₀, ε̂) from the network's output at x_t for the objective (eps, x0, v, or flow: the
 * velocity û = ε − x₀, so x̂₀ = x_s − s û, ε̂ = x_s + (1 − s) û), x̂₀ clipped to [-1, 1] and
 * ε̂ recomputed from it when `clip` (GaussianDiffusion.predict_x0_eps). */
export function predictX0Eps(record, t, x, output, clip) {
  const [a, b] = pathCoefficients(record, t);
  const x0 = new Float32Array(x.length);
  const eps = new Float32Array(x.length);
  for (let k = 0; k < x.length; k++) {
    if (isFlow(record)) {
      x0[k] = x[k] - b * output[k];
      eps[k] = x[k] + a * output[k];
    } else if (record.objective === 'eps') {
      x0[k] = (x[k] - b * output[k]) / a;
      eps[k] = output[k];
    } else if (record.objective === 'x0') {
      x0[k] = output[k];
      eps[k] = (x[k] - a * output[k]) / b;
    } else {
      x0[k] = a * x[k] - b * output[k];
      eps[k] = b * x[k] + a * output[k];
    }
  }
  return clip ? fromX0(record, t, x, x0, true) : { x0, eps };
}

/** DDIM (Song et al. 2021, eq. 12) from timesteps[i] to the next one (the clean image after
 * the last): x_s = √ᾱ_s x̂₀ + √(1 − ᾱ_s − σ²) ε̂ + σ z. `noise()` gives z, drawn only when
 * η > 0 and a noisy step follows. */
export function ddimStep(record, timesteps, i, eta, x, x0, eps, noise) {
  const alphaBar = (t) => (t >= 0 ? record.schedule.alphas_cumprod[t] : 1);
  const t = timesteps[i];
  const s = i + 1 < timesteps.length ? timesteps[i + 1] : -1;
  const aT = alphaBar(t);
  const aS = alphaBar(s);
  const sigma = eta * Math.sqrt(Math.max(0, ((1 - aS) / (1 - aT)) * (1 - aT / aS)));
  const direction = Math.sqrt(Math.max(0, 1 - aS - sigma * sigma));
  const z = eta > 0 && s >= 0 ? noise() : null;
  const next = new Float32Array(x.length);
  for (let k = 0; k < x.length; k++) {
    next[k] = Math.sqrt(aS) * x0[k] + direction * eps[k] + (z ? sigma * z[k] : 0);
  }
  return next;
}

/** Ancestral DDPM (Ho et al. 2020, Algorithm 2) from t to t−1: μ̃_t(x_t, x̂₀) + σ_t z with
 * σ_t² = β̃_t (fixed_small) or β_t (fixed_large); no noise at t = 0. */
export function ddpmStep(record, t, variance, x, x0, noise) {
  const s = record.schedule;
  const z = t > 0 ? noise() : null;
  const sigma = t > 0 ? Math.sqrt(variance === 'fixed_large' ? s.betas[t] : s.posterior_variance[t]) : 0;
  const next = new Float32Array(x.length);
  for (let k = 0; k < x.length; k++) {
    next[k] = s.posterior_mean_coef1[t] * x0[k] + s.posterior_mean_coef2[t] * x[k] + (z ? sigma * z[k] : 0);
  }
  return next;
}

/** Multistep consistency sampling (Song et al. 2023, Algorithm 1) from timesteps[i] to the
 * next one: x_s = √ᾱ_s x̂₀ + √(1 − ᾱ_s) z with fresh z, x̂₀ itself after the last. `noise()`
 * gives z, drawn only when a noisy step follows. */
export function consistencyStep(record, timesteps, i, x0, noise) {
  if (i + 1 >= timesteps.length) return x0;
  const aS = record.schedule.alphas_cumprod[timesteps[i + 1]];
  const z = noise();
  const next = new Float32Array(x0.length);
  for (let k = 0; k < x0.length; k++) next[k] = Math.sqrt(aS) * x0[k] + Math.sqrt(1 - aS) * z[k];
  return next;
}

// ---- The reverse process ------------------------------------------------------------------

/** Whether the record's network takes γ as an input (model.json's inputs name `guidance`): a
 * student of distilled guidance (guidance.py's takes_guidance). */
export function takesGuidance(record) {
  return (record.inputs ?? []).includes('guidance');
}

/** Whether the page offers γ for the record's model: a conditional one (classifier-free
 * guidance) or one with a guide (autoguidance). */
export function guided(record) {
  return record.num_classes !== null || Boolean(record.guide);
}

/** The guided output for x (n samples) at t: ε_u + γ(ε_c − ε_u) from one doubled batch with
 * the null label, or one call with γ for a network that takes it; γ = 1 (or null, or no
 * labels) takes only the conditional pass. */
async function guidedOutput(record, denoise, x, t, labels, gamma, n) {
  if (labels === null || gamma === null || gamma === 1) {
    return denoise(x, new Array(n).fill(t), labels, n);
  }
  if (takesGuidance(record)) {
    return denoise(x, new Array(n).fill(t), labels, n, new Array(n).fill(gamma));
  }
  const doubled = new Float32Array(2 * x.length);
  doubled.set(x);
  doubled.set(x, x.length);
  const output = await denoise(
    doubled,
    new Array(2 * n).fill(t),
    [...labels, ...new Array(n).fill(record.num_classes)],
    2 * n,
  );
  const mixed = new Float32Array(x.length);
  for (let k = 0; k < x.length; k++) {
    const cond = output[k];
    const uncond = output[x.length + k];
    mixed[k] = uncond + gamma * (cond - uncond);
  }
  return mixed;
}

/** (x̂₀, ε̂) of the network guided away from the record's guide at γ = `scale` (Denoiser.autoguided;
 * Karras et al. 2024, eq. 2): x̂₀ = x̂₀_guide + γ (x̂₀ − x̂₀_guide), each from its own objective,
 * unclipped until mixed; the guide takes the labels if it is conditional. γ = 1 or null
 * (outside the interval) calls the network alone. */
async function autoguidedAt(record, denoise, guide, x, t, labels, n, scale, clip) {
  const times = new Array(n).fill(t);
  const { x0 } = predictX0Eps(record, t, x, await denoise(x, times, labels, n), false);
  if (scale === null || scale === 1) return fromX0(record, t, x, x0, clip);
  const weakLabels = record.guide.num_classes !== null ? labels : null;
  const weakOutput = await guide(x, times, weakLabels, n);
  const weak = predictX0Eps({ ...record, objective: record.guide.objective }, t, x, weakOutput, false).x0;
  return fromX0(record, t, x, x0.map((v, k) => weak[k] + scale * (v - weak[k])), clip);
}

/** γ at timestep t (guidance_scale_at): γ where σ_t lies in interval (low, high], null (plain
 * conditional sampling) elsewhere; a null interval guides every step. */
export function guidanceScaleAt(record, t, gamma, interval) {
  if (interval === null || interval === undefined) return gamma;
  const sigma = noiseLevel(record, t);
  return interval[0] < sigma && sigma <= interval[1] ? gamma : null;
}

/** Classes 0,0,…,1,1,… for n samples, counts differing by at most one (balanced_labels). */
export function balancedLabels(n, numClasses) {
  return Array.from({ length: n }, (_, i) => Math.floor((i * numClasses) / n));
}

/** The timesteps the sampler of `settings` visits: T−1 … 0 for DDPM; for consistency sampling
 * the record's `timesteps` while num_steps is their count, else num_steps of its spacing
 * (trailing when it names none); uniform in s for the flow samplers; DDIM's sequence else. */
export function visitedTimesteps(record, settings) {
  const T = record.num_timesteps;
  const alphasCumprod = record.schedule.alphas_cumprod;
  // More steps than T visit each timestep once (step_count).
  const n = Math.min(settings.num_steps, T);
  if (settings.name === 'ddpm') return Array.from({ length: T }, (_, i) => T - 1 - i);
  if (FLOW_SAMPLERS.includes(settings.name)) return timestepSequence(alphasCumprod, n, 'uniform');
  if (settings.name !== 'consistency') return timestepSequence(alphasCumprod, n, settings.spacing);
  if (settings.timesteps?.length === settings.num_steps) return [...settings.timesteps];
  return timestepSequence(alphasCumprod, n, settings.spacing ?? CONSISTENCY_SPACING);
}

/** (x̂₀, ε̂) of the network at x (n samples), timestep t, guided as `settings` say: away from
 * `guide` (the record's guide network) when given, else classifier-free for labels. */
async function predictAt(record, denoise, settings, x, t, labels, n, guide = null) {
  const gamma = labels === null && guide === null ? null : settings.guidance_scale;
  const scale = guidanceScaleAt(record, t, gamma, settings.guidance_interval);
  if (guide !== null) return autoguidedAt(record, denoise, guide, x, t, labels, n, scale, settings.clip_x0);
  const output = await guidedOutput(record, denoise, x, t, labels, scale, n);
  return predictX0Eps(record, t, x, output, settings.clip_x0);
}

/** The flow path's Euler step from timesteps[i] to the next one (s = 0 after the last):
 * x_{s'} = x_s + (s' − s) û with û = ε̂ − x̂₀ (FlowEulerSampler.step). */
export function flowEulerStep(record, timesteps, i, x, x0, eps) {
  const next = i + 1 < timesteps.length ? timesteps[i + 1] : -1;
  const h = flowTime(record, next) - flowTime(record, timesteps[i]);
  return x.map((v, k) => v + h * (eps[k] - x0[k]));
}

/** The sampler's update of x from timesteps[i] to the next one; noise() gives its z. */
function updated(record, settings, timesteps, i, x, x0, eps, noise) {
  if (FLOW_SAMPLERS.includes(settings.name)) return flowEulerStep(record, timesteps, i, x, x0, eps);
  if (settings.name === 'ddpm') return ddpmStep(record, timesteps[i], settings.variance, x, x0, noise);
  if (settings.name === 'consistency') return consistencyStep(record, timesteps, i, x0, noise);
  return ddimStep(record, timesteps, i, settings.eta, x, x0, eps, noise);
}

/** Heun's correction of the flow path's Euler step to x̄ = `euler` at timesteps[i + 1]:
 * x_{s'} = x_s + (s' − s)(û(x_s) + û(x̄))/2 (FlowHeunSampler.advance). */
async function heunCorrected(record, denoise, settings, timesteps, i, x, x0, eps, euler, labels, n, guide) {
  const next = timesteps[i + 1];
  const h = flowTime(record, next) - flowTime(record, timesteps[i]);
  const second = await predictAt(record, denoise, settings, euler, next, labels, n, guide);
  return x.map((v, k) => v + (h * (eps[k] - x0[k] + second.eps[k] - second.x0[k])) / 2);
}

/** Values clipped to [-1, 1]. */
function clipped(x) {
  return x.map((v) => Math.min(1, Math.max(-1, v)));
}

/**
 * Samples in [-1, 1] from `noise` (x_T of n samples, flat Float32Array), as Sampler.sample.
 * denoise(x, t[], y[] | null, batch, γ[] | undefined) → Float32Array: the network (γ only
 * for one that takes it, `takesGuidance`); settings: name (ddim, ddpm, consistency, or
 * flow_euler and flow_heun for a flow model), num_steps, eta, spacing, timesteps
 * (consistency), variance, clip_x0, guidance_scale,
 * guidance_interval ([low, high] or null); guide: the record's guide network, called as
 * denoise without γ, for autoguidance (null: none); labels: n classes or null;
 * normal(size) → Float32Array of standard normal draws (the per-step noise);
 * onStep(i, total, t, x_t, x̂₀) after each step's prediction.
 */
export async function sample({ record, denoise, guide = null, noise, labels, settings, normal, onStep }) {
  const n = noise.length / imageSize(imageShape(record));
  const timesteps = visitedTimesteps(record, settings);
  const draw = () => normal(noise.length);
  let x = Float32Array.from(noise);
  for (let i = 0; i < timesteps.length; i++) {
    const { x0, eps } = await predictAt(record, denoise, settings, x, timesteps[i], labels, n, guide);
    if (onStep) onStep(i, timesteps.length, timesteps[i], x, x0);
    const euler = updated(record, settings, timesteps, i, x, x0, eps, draw);
    x = settings.name === 'flow_heun' && i + 1 < timesteps.length
      ? await heunCorrected(record, denoise, settings, timesteps, i, x, x0, eps, euler, labels, n, guide)
      : euler;
  }
  return clipped(x);
}

// ---- Editing: ports of ddpm_lightning/editing (masks.py, inpaint.py, sdedit.py) -----------

// The regions a completion can fill (masks.py's filled_region), as the page's menu offers them.
export const FILL_REGIONS = ['bottom', 'top', 'left', 'right', 'center'];

/** known (H·W, row by row): 1 to keep, 0 to fill the region `name` of FILL_REGIONS (a half, or
 * the central square of half the side), as masks.py's known_mask(name, H, W). */
export function knownMask(name, height, width) {
  const h = Math.floor(height / 2);
  const w = Math.floor(width / 2);
  const regions = {
    top: [0, h, 0, width],
    bottom: [h, height, 0, width],
    left: [0, height, 0, w],
    right: [0, height, w, width],
    center: [Math.floor(height / 4), Math.floor(height / 4) + h, Math.floor(width / 4), Math.floor(width / 4) + w],
  };
  if (!(name in regions)) throw new Error(`no fill region ${name}: choose one of ${FILL_REGIONS.join(', ')}`);
  const [top, bottom, left, right] = regions[name];
  const known = new Float32Array(height * width).fill(1);
  for (let r = top; r < bottom; r++) known.fill(0, r * width + left, r * width + right);
  return known;
}

/** m ⊙ kept + (1 − m) ⊙ filled for flat N×C×H×W images, m = known (H·W) in every image and
 * channel. */
export function composite(known, kept, filled) {
  const area = known.length;
  return filled.map((v, k) => {
    const m = known[k % area];
    return m * kept[k] + (1 - m) * v;
  });
}

/** Set the pixels of `pixels` (H·W, row by row) whose centres lie within `radius` of the segment
 * from (x0, y0) to (x1, y1) (in pixels, from the top left corner) to `value`: a round brush. */
export function brushStroke(pixels, height, width, [x0, y0], [x1, y1], radius, value) {
  const dx = x1 - x0;
  const dy = y1 - y0;
  const length2 = dx * dx + dy * dy;
  const left = Math.max(0, Math.floor(Math.min(x0, x1) - radius));
  const right = Math.min(width - 1, Math.ceil(Math.max(x0, x1) + radius));
  const top = Math.max(0, Math.floor(Math.min(y0, y1) - radius));
  const bottom = Math.min(height - 1, Math.ceil(Math.max(y0, y1) + radius));
  for (let r = top; r <= bottom; r++) {
    for (let c = left; c <= right; c++) {
      const px = c + 0.5;
      const py = r + 0.5;
      const along = length2 === 0 ? 0 : Math.min(1, Math.max(0, ((px - x0) * dx + (py - y0) * dy) / length2));
      const ex = px - (x0 + along * dx);
      const ey = py - (y0 + along * dy);
      if (ex * ex + ey * ey <= radius * radius) pixels[r * width + c] = value;
    }
  }
}

/** n copies of a grey drawing (H·W in [-1, 1]) as flat N×C×H×W images, the same in every
 * channel. */
export function drawnImages(drawing, shape, n) {
  const [channels] = shape;
  const images = new Float32Array(n * channels * drawing.length);
  for (let k = 0; k < n * channels; k++) images.set(drawing, k * drawing.length);
  return images;
}

/** An edit's draws after x_T, as editing/sampling.py's Draws: `next()` takes draw 0, 1, 2, … in
 * turn, `at(i)` is draw i itself; normal(size) makes them in order. */
export function editDraws(normal, size) {
  const made = [];
  let taken = 0;
  const at = (i) => {
    while (made.length <= i) made.push(normal(size));
    return made[i];
  };
  return { at, next: () => at(taken++) };
}

/** RePaint's moves over `numSteps` visited timesteps (inpaint.py's repaint_plan): stretches of
 * `jumpLength` updates, each done `resampleJumps` times, ['up', start, end] between passes. */
export function repaintPlan(numSteps, resampleJumps, jumpLength) {
  const moves = [];
  for (let start = 0; start < numSteps; start += jumpLength) {
    const end = Math.min(start + jumpLength, numSteps);
    for (let rep = 0; rep < resampleJumps; rep++) {
      for (let i = start; i < end; i++) moves.push(['down', i, i + 1]);
      if (rep + 1 < resampleJumps) moves.push(['up', start, end]);
    }
  }
  return moves;
}

/** Refuse, as `edit` does, an edit of a flow model (editing follows the ᾱ path), and as
 * sampling.py's require_sampler does, one with a sampler other than DDPM or DDIM: the edits are
 * those of ddpm_lightning/editing, which take no other. */
function requireEditSampler(record, settings) {
  if (isFlow(record)) {
    throw new Error('edits follow the ᾱ path, but this model predicts the flow path: sample it, or edit another model');
  }
  if (settings.name !== 'ddpm' && settings.name !== 'ddim') {
    throw new Error(`edits work with DDIM or DDPM, not ${settings.name} sampling: choose one under Sampler`);
  }
}

/** √a · image + √(1 − a) · ε, elementwise (q(x_t | x₀) for a = ᾱ_t). */
function noised(image, a, eps) {
  return image.map((v, k) => Math.sqrt(a) * v + Math.sqrt(1 - a) * eps[k]);
}

/**
 * Inpainting by replacement (inpaint.py; Song et al. 2021, App. I) with RePaint's resampling
 * (Lugmayr et al. 2022): after every update to s the pixels where known = 1 become
 * √ᾱ_s image + √(1−ᾱ_s) ε; between passes over a stretch x_t = √(ᾱ_t/ᾱ_s) x_s + √(1−ᾱ_t/ᾱ_s) z.
 * image: flat N×C×H×W in [-1, 1]; known: H·W; initial: x_T; draws: editDraws (per update the
 * step's z, then the known pixels' ε; one per jump up); the rest as `sample` (DDIM or DDPM).
 */
export async function inpaint({ record, denoise, image, known, labels, settings, initial, draws, onStep, resampleJumps = 1, jumpLength = 10 }) {
  requireEditSampler(record, settings);
  const n = image.length / imageSize(imageShape(record));
  const timesteps = visitedTimesteps(record, settings);
  const alphaBar = (i) => (i < timesteps.length ? record.schedule.alphas_cumprod[timesteps[i]] : 1);
  const plan = repaintPlan(timesteps.length, resampleJumps, jumpLength);
  const total = plan.filter(([kind]) => kind === 'down').length;
  let x = Float32Array.from(initial);
  let updates = 0;
  for (const [kind, i, below] of plan) {
    if (kind === 'up') {
      x = noised(x, alphaBar(i) / alphaBar(below), draws.next());
      continue;
    }
    const { x0, eps } = await predictAt(record, denoise, settings, x, timesteps[i], labels, n);
    if (onStep) onStep(updates, total, timesteps[i], x, x0);
    updates += 1;
    const z = draws.next();
    x = updated(record, settings, timesteps, i, x, x0, eps, () => z);
    x = composite(known, noised(image, alphaBar(i + 1), draws.next()), x);
  }
  return clipped(x);
}

/** The index of the visited timestep nearest strength·T (sdedit.py's start_index; the first on
 * ties), null for strength 0. */
export function startIndex(timesteps, T, strength) {
  if (strength === 0) return null;
  const target = strength * T;
  let best = 0;
  for (let i = 1; i < timesteps.length; i++) {
    if (Math.abs(timesteps[i] + 1 - target) < Math.abs(timesteps[best] + 1 - target)) best = i;
  }
  return best;
}

/**
 * SDEdit (sdedit.py; Meng et al. 2022): x_t = √ᾱ_t image + √(1−ᾱ_t) ε at the visited timestep
 * nearest strength·T, then the sampler's remaining updates. initial: ε (the x_T draw, itself x_T
 * at strength 1); draws.at(i): step i's noise, as plain sampling draws it; DDIM or DDPM.
 */
export async function sdedit({ record, denoise, image, labels, settings, initial, draws, onStep, strength }) {
  requireEditSampler(record, settings);
  const n = image.length / imageSize(imageShape(record));
  const timesteps = visitedTimesteps(record, settings);
  const first = startIndex(timesteps, record.num_timesteps, strength);
  if (first === null) return Float32Array.from(image);
  const a = record.schedule.alphas_cumprod[timesteps[first]];
  let x = first === 0 ? Float32Array.from(initial) : noised(image, a, initial);
  for (let i = first; i < timesteps.length; i++) {
    const { x0, eps } = await predictAt(record, denoise, settings, x, timesteps[i], labels, n);
    if (onStep) onStep(i - first, timesteps.length - first, timesteps[i], x, x0);
    x = updated(record, settings, timesteps, i, x, x0, eps, () => draws.at(i));
  }
  return clipped(x);
}

// ---- Random numbers for the page (not torch's: the same seed gives other images) ----------

/** mulberry32: a small seeded generator of uniform numbers in [0, 1). */
function uniforms(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let r = Math.imul(a ^ (a >>> 15), 1 | a);
    r = (r + Math.imul(r ^ (r >>> 7), 61 | r)) ^ r;
    return ((r ^ (r >>> 14)) >>> 0) / 4294967296;
  };
}

/** normal(size) → Float32Array of standard normal draws (Box–Muller), seeded. */
export function normals(seed) {
  const uniform = uniforms(seed);
  return (size) => {
    const out = new Float32Array(size);
    for (let k = 0; k < size; k += 2) {
      const radius = Math.sqrt(-2 * Math.log(1 - uniform()));
      const angle = 2 * Math.PI * uniform();
      out[k] = radius * Math.cos(angle);
      if (k + 1 < size) out[k + 1] = radius * Math.sin(angle);
    }
    return out;
  };
}

/** normal(size) that hands out consecutive slices of given draws (the test hook's stepNoise). */
function givenNormals(draws) {
  let used = 0;
  return (size) => {
    if (used + size > draws.length) throw new Error('stepNoise ran out: pass one x-sized draw per noisy step');
    used += size;
    return draws.slice(used - size, used);
  };
}

// ---- The worker: the networks in onnxruntime-web and the sampling loop ---------------------

function workerMain() {
  const runtime = import(ORT_MODULE).then((ort) => {
    ort.env.wasm.numThreads = 1;
    return ort;
  });
  const networks = new Map();
  const load = (ort, path) => {
    if (!networks.has(path)) {
      networks.set(path, ort.InferenceSession.create(path, { executionProviders: ['wasm'] }));
    }
    return networks.get(path);
  };
  self.onmessage = async ({ data }) => {
    const { id, path, record, noise, labels, settings, seed, stepNoise, edit } = data;
    try {
      const ort = await runtime;
      const [channels, height, width] = imageShape(record);
      // One ONNX network as denoise(x, t, y, batch, γ): the inputs its `spec` (the record, or the
      // record's guide) names, the null label where y is null, γ = 1 where none is given.
      const runner = (network, spec) => async (x, t, y, batch, guidance = null) => {
        const feeds = {
          x: new ort.Tensor('float32', x, [batch, channels, height, width]),
          t: new ort.Tensor('int64', BigInt64Array.from(t, BigInt), [batch]),
        };
        if (spec.inputs.includes('y')) {
          const classes = y ?? new Array(batch).fill(spec.num_classes);
          feeds.y = new ort.Tensor('int64', BigInt64Array.from(classes, BigInt), [batch]);
        }
        if (spec.inputs.includes('guidance')) {
          const gammas = guidance ?? new Array(batch).fill(1);
          feeds.guidance = new ort.Tensor('float32', Float32Array.from(gammas), [batch]);
        }
        const result = await network.run(feeds);
        return result[record.output].data;
      };
      const denoise = runner(await load(ort, `${path}/model.onnx`), record);
      const guide = record.guide && !edit ? runner(await load(ort, `${path}/${record.guide.file}`), record.guide) : null;
      const onStep = (i, total, t, x, x0) => self.postMessage({ id, type: 'step', i, total, t, x, x0 });
      const normal = stepNoise ? givenNormals(stepNoise) : normals(seed + 1);
      const job = { record, denoise, labels, settings, onStep };
      const images = !edit
        ? await sample({ ...job, guide, noise, normal })
        : await (edit.method === 'sdedit' ? sdedit : inpaint)({
            ...job,
            ...edit,
            initial: noise,
            draws: editDraws(normal, noise.length),
          });
      self.postMessage({ id, type: 'done', images }, [images.buffer]);
    } catch (error) {
      self.postMessage({ id, type: 'error', message: String(error?.message ?? error) });
    }
  };
}

// ---- The page -----------------------------------------------------------------------------

const $ = (id) => document.getElementById(id);

/** Draw image `index` of `images` (flat N×C×H×W, [-1, 1]) into `canvas`, one canvas pixel per
 * image pixel (CSS zooms it). */
function paint(canvas, images, shape, index = 0) {
  const [, height, width] = shape;
  canvas.width = width;
  canvas.height = height;
  canvas.getContext('2d').putImageData(new ImageData(rgba(images, shape, index), width, height), 0, 0);
}

/** Zoom the x_t and x̂₀ canvases and the samples' tiles for images of `shape` (the heights
 * follow, style.css). */
function fitViews(shape) {
  const width = shape[2];
  for (const id of ['xt', 'x0']) $(id).style.width = `${zoomedWidth(width, PROCESS_WIDTH)}px`;
  $('grid').style.setProperty('--tile', `${zoomedWidth(width, TILE_WIDTH)}px`);
}

/** Columns of the samples' grid: one row up to MAX_COLUMNS, then rows as even as can be. */
function gridColumns(n) {
  return Math.ceil(n / Math.ceil(n / MAX_COLUMNS));
}

/** The class a tile shows: its name (the digit for MNIST), or its number without names. */
function className(info, label) {
  return info.class_names?.[label] ?? String(label);
}

/** Replace the samples' grid by n empty tiles, captioned by `captions` (null: none), the grid
 * by "n `noun`"; their canvases. */
function layTiles(n, captions, noun = 'samples') {
  const figures = Array.from({ length: n }, (_, s) => {
    const figure = document.createElement('figure');
    figure.className = 'tile';
    figure.append(document.createElement('canvas'));
    if (captions !== null) {
      const caption = document.createElement('figcaption');
      caption.textContent = captions[s];
      figure.append(caption);
    }
    return figure;
  });
  $('grid').style.setProperty('--columns', gridColumns(n));
  $('grid').replaceChildren(...figures);
  $('samples-caption').textContent = `${n} ${noun}`;
  return figures.map((figure) => figure.firstChild);
}

/** A Float32Array from a Float32Array, a plain array, or the URL of a .bin (float32,
 * little-endian) or .json (an array) file. */
async function floats(value) {
  if (typeof value !== 'string') return Float32Array.from(value);
  const response = await fetch(value);
  if (!response.ok) throw new Error(`${value}: HTTP ${response.status}`);
  if (value.endsWith('.json')) return Float32Array.from(await response.json());
  return new Float32Array(await response.arrayBuffer());
}

async function pageMain() {
  const models = await (await fetch('models.json')).json();
  const records = new Map();
  const record = async (model) => {
    if (!records.has(model.id)) records.set(model.id, (await fetch(`${model.path}/model.json`)).json());
    return records.get(model.id);
  };
  const worker = new Worker(new URL(import.meta.url), { type: 'module' });
  const pending = new Map();
  let nextId = 0;
  worker.onmessage = ({ data }) => {
    const job = pending.get(data.id);
    if (data.type === 'step' && job) job.onStep(data);
    if (data.type === 'done' && job) job.resolve(data.images);
    if (data.type === 'error' && job) job.reject(new Error(data.message));
    if (data.type === 'done' || data.type === 'error') pending.delete(data.id);
  };
  const modelById = (id) => models.find((m) => m.id === id) ?? models[0];

  async function showModel(model) {
    const info = await record(model);
    const conditional = info.num_classes !== null;
    $('class-row').hidden = !conditional;
    $('gamma-row').hidden = !guided(info);
    $('gamma').value = info.sampler.guidance_scale ?? 1;
    if (conditional) {
      const names = info.class_names ?? Array.from({ length: info.num_classes }, (_, i) => String(i));
      $('label').replaceChildren(
        new Option('one of each', 'mixed'),
        ...names.map((name, i) => new Option(name === String(i) ? name : `${i}: ${name}`, String(i))),
      );
    }
    for (const option of $('sampler').options) {
      option.hidden = option.disabled = isFlow(info) !== FLOW_SAMPLERS.includes(option.value);
    }
    $('sampler').value = info.sampler.name;
    $('steps').max = info.num_timesteps;
    $('steps').value = info.sampler.num_steps ?? 20;
    $('eta').value = info.sampler.eta ?? 0;
    showSampler();
  }

  function showSampler() {
    const name = $('sampler').value;
    $('steps').disabled = name === 'ddpm';
    $('eta').disabled = name !== 'ddim';
  }

  /** Enable or disable every button that starts a run. */
  function setIdle(idle) {
    for (const button of document.querySelectorAll('button.action')) button.disabled = !idle;
  }

  /** Run the worker on one request (a sampling run, or an `edit` of the drawing) and animate it;
   * resolves to the final images, named `noun` in the status line. */
  async function run({ model, noise, labels, settings, seed, stepNoise, edit = null, noun = 'samples' }) {
    const info = await record(model);
    const shape = imageShape(info);
    const n = noise.length / imageSize(shape);
    fitViews(shape);
    const captions = labels === null ? null : labels.map((label) => className(info, label));
    const tiles = layTiles(n, captions, noun);
    const paintAll = (x) => tiles.forEach((canvas, s) => paint(canvas, x, shape, s));
    const started = performance.now();
    setIdle(false);
    document.body.dataset.state = 'running';
    try {
      const images = await new Promise((resolve, reject) => {
        const id = nextId++;
        const onStep = ({ i, total, t, x, x0 }) => {
          $('progress').max = total;
          $('progress').value = i + 1;
          $('status').textContent = `step ${i + 1} of ${total} (t = ${t})`;
          paint($('xt'), x, shape);
          paint($('x0'), x0, shape);
          paintAll(x);
        };
        pending.set(id, { resolve, reject, onStep });
        worker.postMessage({ id, path: model.path, record: info, noise, labels, settings, seed, stepNoise, edit });
      });
      paint($('xt'), images, shape);
      paintAll(images);
      const elapsed = performance.now() - started;
      const perImage = (elapsed / n).toFixed(0);
      $('status').textContent = `${n} ${noun} in ${(elapsed / 1000).toFixed(2)} s (${perImage} ms per image)`;
      document.body.dataset.state = 'done';
      return images;
    } catch (error) {
      $('status').textContent = `error: ${error.message}`;
      document.body.dataset.state = 'error';
      throw error;
    } finally {
      setIdle(true);
    }
  }

  /** The classes the controls ask for: each class once for 'one of each', else NUM_SAMPLES of
   * the chosen one; null for an unconditional model. */
  function chosenLabels(info) {
    if (info.num_classes === null) return null;
    const choice = $('label').value;
    if (choice === 'mixed') return Array.from({ length: info.num_classes }, (_, i) => i);
    return new Array(NUM_SAMPLES).fill(Number(choice));
  }

  /** The request the controls describe: seeded noise, the class choice, the settings. */
  async function fromControls() {
    const model = modelById($('model').value);
    const info = await record(model);
    const seed = Number($('seed').value) >>> 0;
    const size = imageSize(imageShape(info));
    const labels = chosenLabels(info);
    const n = labels === null ? NUM_SAMPLES : labels.length;
    const settings = {
      ...info.sampler,
      name: $('sampler').value,
      num_steps: Number($('steps').value),
      eta: Number($('eta').value),
      guidance_scale: guided(info) ? Number($('gamma').value) : null,
    };
    return { model, noise: normals(seed)(n * size), labels, settings, seed };
  }

  /** The controls' request with DDIM of at most PREVIEW_STEPS steps (consistency sampling and
   * the flow samplers kept, with at most as many): quick, to show samples on load before
   * anyone presses Generate. */
  async function preview() {
    const request = await fromControls();
    const { settings, model } = request;
    if (settings.name === 'consistency' || FLOW_SAMPLERS.includes(settings.name)) {
      return { ...request, settings: { ...settings, num_steps: Math.min(PREVIEW_STEPS, settings.num_steps) } };
    }
    const steps = settings.name === 'ddim' ? settings.num_steps : (await record(model)).num_timesteps;
    const quick = { name: 'ddim', num_steps: Math.min(PREVIEW_STEPS, steps), spacing: settings.spacing ?? 'uniform' };
    return { ...request, settings: { ...settings, ...quick } };
  }

  /** Generate the preview and say in the status line that Generate runs the full settings. */
  async function firstLook() {
    const request = await preview();
    await run(request);
    const { name, num_steps: steps } = request.settings;
    const quick = {
      consistency: `${steps}-step consistency sampling`,
      flow_euler: `${steps} Euler steps of the flow`,
      flow_heun: `${steps} Heun steps of the flow`,
    }[name] ?? `DDIM-${steps}`;
    $('status').textContent += `: a first look with ${quick}, press Generate for the settings above`;
  }

  // ---- The drawing pad and its edits ----

  /** The visitor's drawing (H·W grey in [-1, 1], white on black) and the region marked for
   * refilling (H·W, 1 where marked), at the model's image size. */
  const pad = { drawing: new Float32Array(0), region: new Float32Array(0), height: 0, width: 0 };
  let stroking = null;
  let fed = null;

  /** Show the drawing, the marked region tinted red, zoomed as x_t. */
  function showPad() {
    const bytes = rgba(pad.drawing, [1, pad.height, pad.width]);
    pad.region.forEach((marked, p) => {
      if (marked) bytes.set([128 + bytes[4 * p] / 2, bytes[4 * p] / 4, bytes[4 * p] / 4], 4 * p);
    });
    $('drawing').getContext('2d').putImageData(new ImageData(bytes, pad.width, pad.height), 0, 0);
  }

  /** An empty pad (black, nothing marked) of the image size of `shape`. */
  function clearPad(shape) {
    const [, height, width] = shape;
    Object.assign(pad, { drawing: new Float32Array(height * width).fill(-1), region: new Float32Array(height * width), height, width });
    $('drawing').width = width;
    $('drawing').height = height;
    $('drawing').style.width = `${zoomedWidth(width, PROCESS_WIDTH)}px`;
    showPad();
  }

  /** The pointer's place on the pad, in image pixels from the top left corner. */
  function padPoint(event) {
    const canvas = $('drawing');
    const box = canvas.getBoundingClientRect();
    return [
      ((event.clientX - box.left - canvas.clientLeft) * pad.width) / canvas.clientWidth,
      ((event.clientY - box.top - canvas.clientTop) * pad.height) / canvas.clientHeight,
    ];
  }

  /** Paint from `from` to `to` with the chosen brush: the pen (white), the eraser (black) or
   * the region brush (marks the part to refill). */
  function stroke(from, to) {
    const tool = document.querySelector('input[name="tool"]:checked').value;
    const radius = (BRUSH_RADII[tool] * pad.width) / 32;
    const [target, value] = tool === 'region' ? [pad.region, 1] : [pad.drawing, tool === 'pen' ? 1 : -1];
    brushStroke(target, pad.height, pad.width, from, to, radius, value);
    showPad();
  }

  $('drawing').addEventListener('pointerdown', (event) => {
    event.preventDefault();
    $('drawing').setPointerCapture(event.pointerId);
    stroking = padPoint(event);
    stroke(stroking, stroking);
  });
  $('drawing').addEventListener('pointermove', (event) => {
    if (stroking === null) return;
    const point = padPoint(event);
    stroke(stroking, point);
    stroking = point;
  });
  for (const type of ['pointerup', 'pointercancel']) {
    $('drawing').addEventListener(type, () => {
      stroking = null;
    });
  }
  $('clear').onclick = () => clearPad([1, pad.height, pad.width]);
  $('strength').oninput = () => {
    $('strength-value').textContent = Number($('strength').value).toFixed(2);
  };

  /** The edit a button asks for: NUM_SAMPLES copies of the drawing, the controls' sampler, the
   * chosen class (conditional models; none for 'one of each'), seeded noise or the test hook's
   * fed noise; `edit` names the method and its mask or strength. */
  async function editRequest(drawing, edit, noun) {
    const model = modelById($('model').value);
    const info = await record(model);
    const shape = imageShape(info);
    const request = await fromControls();
    const { seed } = request;
    // γ of a model with a guide is autoguidance's, and edits run the model alone (as edit= does).
    const settings = info.guide ? { ...request.settings, guidance_scale: null } : request.settings;
    const choice = $('label').value;
    const labels = info.num_classes === null || choice === 'mixed' ? null : new Array(NUM_SAMPLES).fill(Number(choice));
    const image = drawnImages(drawing, shape, NUM_SAMPLES);
    const noise = fed?.noise ?? normals(seed)(image.length);
    const stepNoise = fed?.stepNoise ?? null;
    fed = null;
    return { model, noise, labels, settings, seed, stepNoise, noun, edit: { ...edit, image } };
  }

  /** Run an edit of the drawing as it is now (errors go to the status line); its inputs and
   * images stay for the test hook. */
  async function runEdit(edit, noun) {
    window.ddpmTest.lastEdit = null;
    const drawing = Float32Array.from(pad.drawing);
    try {
      const request = await editRequest(drawing, edit, noun);
      $('process').scrollIntoView({ block: 'nearest' });
      const images = await run(request);
      window.ddpmTest.lastEdit = { drawing: Array.from(drawing), known: edit.known ? Array.from(edit.known) : null, images: Array.from(images) };
    } catch (error) {
      $('status').textContent = `error: ${error.message}`;
    }
  }

  const passes = () => Math.max(1, Math.round(Number($('jumps').value)));
  $('complete').onclick = () => {
    const known = knownMask($('fill').value, pad.height, pad.width);
    runEdit({ method: 'inpaint', known, resampleJumps: passes(), jumpLength: JUMP_LENGTH }, 'completions');
  };
  $('refill').onclick = () => {
    if (!pad.region.some((marked) => marked)) {
      $('status').textContent = 'mark the part to refill with the region brush first';
      return;
    }
    const known = pad.region.map((marked) => 1 - marked);
    runEdit({ method: 'inpaint', known, resampleJumps: passes(), jumpLength: JUMP_LENGTH }, 'refills');
  };
  $('cleanup').onclick = () => {
    runEdit({ method: 'sdedit', strength: Number($('strength').value) }, 'clean-ups');
  };

  $('model').replaceChildren(...models.map((m) => new Option(m.title, m.id)));
  $('model').onchange = async () => {
    const model = modelById($('model').value);
    await showModel(model);
    const [, height, width] = imageShape(await record(model));
    if (height !== pad.height || width !== pad.width) clearPad([1, height, width]);
  };
  $('sampler').onchange = showSampler;
  $('generate').onclick = async () => run(await fromControls()).catch(() => {});
  await showModel(models[0]);
  clearPad(imageShape(await record(models[0])));
  setIdle(true);
  $('status').textContent = 'ready';

  // The test hook (tests/test_demo_browser.py): the page's sampler on given noise.
  window.ddpmTest = {
    /** Feed the next edit button its noise: x_T (`noise`) and the draws after it (`stepNoise`),
     * URLs or arrays as for generate; the edit's inputs and images then appear as `lastEdit`. */
    async feed(options) {
      fed = { noise: await floats(options.noise), stepNoise: await floats(options.stepNoise) };
    },
    lastEdit: null,
    async generate(options) {
      const model = modelById(options.model);
      const info = await record(model);
      const noise = await floats(options.noise);
      const n = noise.length / imageSize(imageShape(info));
      let labels = null;
      if (info.num_classes !== null) {
        const label = options.label ?? null;
        labels = label === null ? balancedLabels(n, info.num_classes) : Array.isArray(label) ? label : new Array(n).fill(label);
      }
      const settings = { ...info.sampler };
      for (const [key, option] of [['name', 'sampler'], ['num_steps', 'steps'], ['eta', 'eta'], ['spacing', 'spacing'], ['guidance_scale', 'gamma'], ['guidance_interval', 'interval'], ['variance', 'variance'], ['clip_x0', 'clip'], ['timesteps', 'timesteps']]) {
        if (options[option] !== undefined) settings[key] = options[option];
      }
      const stepNoise = options.stepNoise === undefined ? null : await floats(options.stepNoise);
      return Array.from(await run({ model, noise, labels, settings, seed: 0, stepNoise }));
    },
  };
  await firstLook();
}

if (typeof document !== 'undefined') {
  pageMain().catch((error) => {
    $('status').textContent = `error: ${error.message}`;
    console.error(error);
  });
} else if (typeof WorkerGlobalScope !== 'undefined') {
  workerMain();
}
