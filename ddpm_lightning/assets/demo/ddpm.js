// The demo page of ddpm_lightning: DDIM and DDPM sampling of an exported denoiser
// (model.onnx + model.json) with onnxruntime-web, in a Web Worker, and the page around it.
//
// The sampler is a port of ddpm_lightning/diffusion/samplers.py (timestep_sequence,
// Sampler.predict, Sampler.guidance_scale_at, DDIMSampler.step, DDPMSampler.step) and guidance.py
// (guided_output); for the same starting noise (and per-step noise) it gives the Python sampler's
// images, checked by
// tests/test_demo.py (in Node, with a closed-form denoiser) and tests/test_demo_browser.py (in
// Chromium, with the ONNX models). This one file is the page's script, the worker's script (the
// page starts it as a module worker) and, in Node, a plain module of the sampler's functions.

const ORT_MODULE = './ort/ort.wasm.bundle.min.mjs';
const NUM_SAMPLES = 8;
// The first look the page generates on load: DDIM with at most this many steps.
const PREVIEW_STEPS = 10;
// Tiles a row holds before the samples take two or more rows: one of each of 10 classes fits.
const MAX_COLUMNS = 10;
// Karras et al. 2022 (EDM), Table 1: σ_max of the ρ-spaced grid and its exponent ρ.
const KARRAS_SIGMA_MAX = 80;
const KARRAS_RHO = 7;

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

// ---- One step: Sampler.predict, DDIMSampler.step, DDPMSampler.step ------------------------

/** (x̂₀, ε̂) from the network's output at x_t for the objective (eps, x0 or v), x̂₀ clipped
 * to [-1, 1] and ε̂ recomputed from it when `clip` (GaussianDiffusion.predict_x0_eps). */
export function predictX0Eps(record, t, x, output, clip) {
  const a = record.schedule.sqrt_alphas_cumprod[t];
  const b = record.schedule.sqrt_one_minus_alphas_cumprod[t];
  const x0 = new Float32Array(x.length);
  const eps = new Float32Array(x.length);
  for (let k = 0; k < x.length; k++) {
    if (record.objective === 'eps') {
      x0[k] = (x[k] - b * output[k]) / a;
      eps[k] = output[k];
    } else if (record.objective === 'x0') {
      x0[k] = output[k];
      eps[k] = (x[k] - a * output[k]) / b;
    } else {
      x0[k] = a * x[k] - b * output[k];
      eps[k] = b * x[k] + a * output[k];
    }
    if (clip) {
      x0[k] = Math.min(1, Math.max(-1, x0[k]));
      eps[k] = (x[k] - a * x0[k]) / b;
    }
  }
  return { x0, eps };
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

// ---- The reverse process ------------------------------------------------------------------

/** The guided output for x (n samples) at t: ε_u + γ(ε_c − ε_u) from one doubled batch with
 * the null label; γ = 1 (or null, or no labels) takes only the conditional pass. */
async function guidedOutput(record, denoise, x, t, labels, gamma, n) {
  if (labels === null || gamma === null || gamma === 1) {
    return denoise(x, new Array(n).fill(t), labels, n);
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

/** γ at timestep t (guidance_scale_at): γ where σ_t lies in interval (low, high], null (plain
 * conditional sampling) elsewhere; a null interval guides every step. */
export function guidanceScaleAt(alphasCumprod, t, gamma, interval) {
  if (interval === null || interval === undefined) return gamma;
  const sigma = Math.sqrt((1 - alphasCumprod[t]) / alphasCumprod[t]);
  return interval[0] < sigma && sigma <= interval[1] ? gamma : null;
}

/** Classes 0,0,…,1,1,… for n samples, counts differing by at most one (balanced_labels). */
export function balancedLabels(n, numClasses) {
  return Array.from({ length: n }, (_, i) => Math.floor((i * numClasses) / n));
}

/**
 * Samples in [-1, 1] from `noise` (x_T of n samples, flat Float32Array), as Sampler.sample.
 * denoise(x, t[], y[] | null, batch) → Float32Array: the network; settings: name (ddim or
 * ddpm), num_steps, eta, spacing, variance, clip_x0, guidance_scale, guidance_interval ([low,
 * high] or null); labels: n classes or null;
 * normal(size) → Float32Array of standard normal draws (the per-step noise);
 * onStep(i, total, t, x_t, x̂₀) after each step's prediction.
 */
export async function sample({ record, denoise, noise, labels, settings, normal, onStep }) {
  const size = record.data_shape.reduce((a, b) => a * b, 1);
  const n = noise.length / size;
  const T = record.num_timesteps;
  const timesteps =
    settings.name === 'ddpm'
      ? Array.from({ length: T }, (_, i) => T - 1 - i)
      : timestepSequence(record.schedule.alphas_cumprod, settings.num_steps, settings.spacing);
  const gamma = labels === null ? null : settings.guidance_scale;
  const draw = () => normal(noise.length);
  let x = Float32Array.from(noise);
  for (let i = 0; i < timesteps.length; i++) {
    const t = timesteps[i];
    const scale = guidanceScaleAt(record.schedule.alphas_cumprod, t, gamma, settings.guidance_interval);
    const output = await guidedOutput(record, denoise, x, t, labels, scale, n);
    const { x0, eps } = predictX0Eps(record, t, x, output, settings.clip_x0);
    if (onStep) onStep(i, timesteps.length, t, x, x0);
    x =
      settings.name === 'ddpm'
        ? ddpmStep(record, t, settings.variance, x, x0, draw)
        : ddimStep(record, timesteps, i, settings.eta, x, x0, eps, draw);
  }
  return x.map((v) => Math.min(1, Math.max(-1, v)));
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
    const { id, path, record, noise, labels, settings, seed, stepNoise } = data;
    try {
      const ort = await runtime;
      const network = await load(ort, `${path}/model.onnx`);
      const [channels, height, width] = record.data_shape;
      const denoise = async (x, t, y, batch) => {
        const feeds = {
          x: new ort.Tensor('float32', x, [batch, channels, height, width]),
          t: new ort.Tensor('int64', BigInt64Array.from(t, BigInt), [batch]),
        };
        if (record.num_classes !== null) {
          const classes = y ?? new Array(batch).fill(record.num_classes);
          feeds.y = new ort.Tensor('int64', BigInt64Array.from(classes, BigInt), [batch]);
        }
        const result = await network.run(feeds);
        return result[record.output].data;
      };
      const onStep = (i, total, t, x, x0) => self.postMessage({ id, type: 'step', i, total, t, x, x0 });
      const normal = stepNoise ? givenNormals(stepNoise) : normals(seed + 1);
      const images = await sample({ record, denoise, noise, labels, settings, normal, onStep });
      self.postMessage({ id, type: 'done', images }, [images.buffer]);
    } catch (error) {
      self.postMessage({ id, type: 'error', message: String(error?.message ?? error) });
    }
  };
}

// ---- The page -----------------------------------------------------------------------------

const $ = (id) => document.getElementById(id);

/** Draw image `index` of `images` (flat, [-1, 1]) into `canvas`. */
function paint(canvas, images, shape, index = 0) {
  const [channels, height, width] = shape;
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext('2d');
  const picture = context.createImageData(width, height);
  picture.data.fill(255);
  const offset = index * channels * height * width;
  for (let p = 0; p < height * width; p++) {
    for (let ch = 0; ch < 3; ch++) {
      const value = images[offset + (channels === 3 ? ch : 0) * height * width + p];
      picture.data[4 * p + ch] = Math.round((Math.min(1, Math.max(-1, value)) + 1) * 127.5);
    }
  }
  context.putImageData(picture, 0, 0);
}

/** Columns of the samples' grid: one row up to MAX_COLUMNS, then rows as even as can be. */
function gridColumns(n) {
  return Math.ceil(n / Math.ceil(n / MAX_COLUMNS));
}

/** The class a tile shows: its name (the digit for MNIST), or its number without names. */
function className(info, label) {
  return info.class_names?.[label] ?? String(label);
}

/** Replace the samples' grid by n empty tiles, captioned by `captions` (null: none); their
 * canvases. */
function layTiles(n, captions) {
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
  $('samples-caption').textContent = `${n} samples`;
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
    $('gamma-row').hidden = !conditional;
    if (conditional) {
      const names = info.class_names ?? Array.from({ length: info.num_classes }, (_, i) => String(i));
      $('label').replaceChildren(
        new Option('one of each', 'mixed'),
        ...names.map((name, i) => new Option(name === String(i) ? name : `${i}: ${name}`, String(i))),
      );
      $('gamma').value = info.sampler.guidance_scale ?? 1;
    }
    $('sampler').value = info.sampler.name;
    $('steps').max = info.num_timesteps;
    $('steps').value = info.sampler.num_steps ?? 20;
    $('eta').value = info.sampler.eta ?? 0;
    showSampler();
  }

  function showSampler() {
    const ddpm = $('sampler').value === 'ddpm';
    $('steps').disabled = ddpm;
    $('eta').disabled = ddpm;
  }

  /** Run the worker on one request and animate it; resolves to the final images. */
  async function run({ model, noise, labels, settings, seed, stepNoise }) {
    const info = await record(model);
    const shape = info.data_shape;
    const n = noise.length / shape.reduce((a, b) => a * b, 1);
    const tiles = layTiles(n, labels === null ? null : labels.map((label) => className(info, label)));
    const paintAll = (x) => tiles.forEach((canvas, s) => paint(canvas, x, shape, s));
    const started = performance.now();
    $('generate').disabled = true;
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
        worker.postMessage({ id, path: model.path, record: info, noise, labels, settings, seed, stepNoise });
      });
      paint($('xt'), images, shape);
      paintAll(images);
      const seconds = ((performance.now() - started) / 1000).toFixed(1);
      $('status').textContent = `${n} samples in ${seconds} s`;
      document.body.dataset.state = 'done';
      return images;
    } catch (error) {
      $('status').textContent = `error: ${error.message}`;
      document.body.dataset.state = 'error';
      throw error;
    } finally {
      $('generate').disabled = false;
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
    const size = info.data_shape.reduce((a, b) => a * b, 1);
    const labels = chosenLabels(info);
    const n = labels === null ? NUM_SAMPLES : labels.length;
    const settings = {
      ...info.sampler,
      name: $('sampler').value,
      num_steps: Number($('steps').value),
      eta: Number($('eta').value),
      guidance_scale: info.num_classes !== null ? Number($('gamma').value) : null,
    };
    return { model, noise: normals(seed)(n * size), labels, settings, seed };
  }

  /** The controls' request with DDIM of at most PREVIEW_STEPS steps: quick, to show samples on
   * load before anyone presses Generate. */
  async function preview() {
    const request = await fromControls();
    const { settings, model } = request;
    const steps = settings.name === 'ddim' ? settings.num_steps : (await record(model)).num_timesteps;
    const quick = { name: 'ddim', num_steps: Math.min(PREVIEW_STEPS, steps), spacing: settings.spacing ?? 'uniform' };
    return { ...request, settings: { ...settings, ...quick } };
  }

  /** Generate the preview and say in the status line that Generate runs the full settings. */
  async function firstLook() {
    const request = await preview();
    await run(request);
    $('status').textContent += `: a first look with DDIM-${request.settings.num_steps}, press Generate for the settings above`;
  }

  $('model').replaceChildren(...models.map((m) => new Option(m.title, m.id)));
  $('model').onchange = () => showModel(modelById($('model').value));
  $('sampler').onchange = showSampler;
  $('generate').onclick = async () => run(await fromControls()).catch(() => {});
  await showModel(models[0]);
  $('generate').disabled = false;
  $('status').textContent = 'ready';

  // The test hook (tests/test_demo_browser.py): the page's sampler on given noise.
  window.ddpmTest = {
    async generate(options) {
      const model = modelById(options.model);
      const info = await record(model);
      const noise = await floats(options.noise);
      const n = noise.length / info.data_shape.reduce((a, b) => a * b, 1);
      let labels = null;
      if (info.num_classes !== null) {
        const label = options.label ?? null;
        labels = label === null ? balancedLabels(n, info.num_classes) : Array.isArray(label) ? label : new Array(n).fill(label);
      }
      const settings = { ...info.sampler };
      for (const [key, option] of [['name', 'sampler'], ['num_steps', 'steps'], ['eta', 'eta'], ['spacing', 'spacing'], ['guidance_scale', 'gamma'], ['guidance_interval', 'interval'], ['variance', 'variance'], ['clip_x0', 'clip']]) {
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
