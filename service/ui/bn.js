// The numbers the dashboard plots, from the API's documents (pure functions, no DOM).

const SQRT_2PI = Math.sqrt(2 * Math.PI);

export function finite(v) {
  return typeof v === "number" && Number.isFinite(v);
}

// Density of N(mean, variance) at x.
export function normalPdf(x, mean, variance) {
  const d = x - mean;
  return Math.exp((-d * d) / (2 * variance)) / (Math.sqrt(variance) * SQRT_2PI);
}

// A curve's sample points over [lo, hi]: a uniform grid plus a dense one around its own mean,
// so that a narrow peak is drawn even when the range is set by a wide curve.
export function densityPoints(mean, variance, lo, hi, n = 161) {
  const sd = Math.sqrt(variance);
  const xs = [];
  for (let i = 0; i < n; i++) xs.push(lo + ((hi - lo) * i) / (n - 1));
  for (let k = -4; k <= 4; k += 0.125) {
    const x = mean + k * sd;
    if (x > lo && x < hi) xs.push(x);
  }
  xs.sort((a, b) => a - b);
  return xs.map((x) => [x, normalPdf(x, mean, variance)]);
}

// The x range that shows every curve from mean - 4 sd to mean + 4 sd.
export function densityRange(curves) {
  let lo = Infinity;
  let hi = -Infinity;
  for (const c of curves) {
    const sd = Math.sqrt(c.shownVar);
    lo = Math.min(lo, c.shownMean - 4 * sd);
    hi = Math.max(hi, c.shownMean + 4 * sd);
  }
  if (!(hi > lo)) {
    lo -= 1;
    hi += 1;
  }
  return [lo, hi];
}

// The three distributions of one feature. Variances are plotted as var + eps: the
// denominator the layer actually normalizes with (and never zero).
// stats: GET /stats JSON; batch: the newest full history entry (or null).
export function featureCurves(stats, batch, f) {
  const eps = stats.eps;
  const curves = [];
  const add = (name, label, mean, variance, source, extra) => {
    if (finite(mean) && finite(variance) && variance + eps > 0) {
      curves.push({ name, label, mean, var: variance, eps, source, ...extra });
    }
  };
  if (stats.running_mean && stats.running_var) {
    add("running", "running", stats.running_mean[f], stats.running_var[f],
        `GET /stats after ${stats.num_batches_tracked} fits`, {});
  }
  if (batch && batch.mean && batch.var) {
    add("batch", "last batch", batch.mean[f], batch.var[f],
        `history: fit ${batch.num_batches_tracked} (version ${batch.version}, n=${batch.count})`,
        { version: batch.version });
  }
  const pop = stats.population;
  if (pop && finite(pop.count[f]) && pop.count[f] > 0) {
    add("population", "population", pop.mean[f], pop.var[f],
        `GET /stats, ${pop.count[f]} values`, { count: pop.count[f] });
  }
  return curves;
}

// Inference maps x to (x - running_mean) * k + bias, k = weight / sqrt(running_var + eps):
// a normal stays normal, its mean and variance move with the same affine map.
export function normalizer(stats, f) {
  if (!stats.running_mean || !stats.running_var) return null;
  const w = stats.weight ? stats.weight[f] : 1;
  const b = stats.bias ? stats.bias[f] : 0;
  const k = w / Math.sqrt(stats.running_var[f] + stats.eps);
  const rm = stats.running_mean[f];
  if (!finite(k) || k === 0 || !finite(rm)) return null;
  return { k, b, rm, map: (m) => (m - rm) * k + b };
}

// The running statistics before fit k, exactly, from that fit's history entry: drift was
// measured against them, so mean_shift and log_var_ratio invert to
//   running_var = (var_B + eps) * exp(-log_var_ratio) - eps,
//   running_mean = mean_B - mean_shift * sqrt(running_var + eps).
// No momentum or convention is needed, and no error accumulates from fit to fit.
export function runningBefore(entry, f, eps) {
  if (!entry.full || !entry.drift) return null;
  const vb = entry.var[f] + eps;
  const rvEps = vb * Math.exp(-entry.drift.log_var_ratio[f]);
  const mean = entry.mean[f] - entry.drift.mean_shift[f] * Math.sqrt(rvEps);
  return { mean, var: rvEps - eps };
}

// Trajectories over fits of one feature, oldest first. entries: history entries in any
// order; stats: the current /stats (the running values after the newest fit).
export function trajectories(entries, stats, f) {
  const eps = stats.eps;
  const sorted = [...entries].sort((a, b) => a.version - b.version);
  const t = {
    running_mean: [], running_var: [], batch_mean: [], batch_var: [],
    kl: [], abs_mean_shift: [], max_kl: [],
  };
  for (const e of sorted) {
    const n = e.num_batches_tracked;
    if (e.summary && finite(e.summary.max_kl)) t.max_kl.push([n, e.summary.max_kl]);
    if (!e.full) continue;
    if (finite(e.mean[f])) t.batch_mean.push([n, e.mean[f]]);
    if (finite(e.var[f])) t.batch_var.push([n, e.var[f]]);
    const before = runningBefore(e, f, eps);
    if (before && finite(before.mean) && finite(before.var)) {
      t.running_mean.push([n - 1, before.mean]);
      t.running_var.push([n - 1, before.var]);
    }
    if (e.drift) {
      if (finite(e.drift.kl[f])) t.kl.push([n, e.drift.kl[f]]);
      if (finite(e.drift.mean_shift[f])) t.abs_mean_shift.push([n, Math.abs(e.drift.mean_shift[f])]);
    }
  }
  if (stats.running_mean && finite(stats.running_mean[f])) {
    t.running_mean.push([stats.num_batches_tracked, stats.running_mean[f]]);
    t.running_var.push([stats.num_batches_tracked, stats.running_var[f]]);
  }
  return t;
}

// The k features with the largest KL in a full entry (ties: the lower index first).
export function topByKl(entry, k) {
  if (!entry || !entry.drift) return [];
  const kl = entry.drift.kl;
  const idx = [];
  for (let i = 0; i < kl.length; i++) if (finite(kl[i])) idx.push(i);
  idx.sort((a, b) => kl[b] - kl[a] || a - b);
  return idx.slice(0, k).map((i) => ({ feature: i, kl: kl[i] }));
}
