//! The DP partitioner: split N instances into K contiguous length stages.
//!
//! # Input
//! Lengths (context = prompt + generated tokens) fall in B bins
//! `[edges[b], edges[b+1])`. For each bin the workload gives:
//! - `arrival_rate[b]`: requests/s whose prompt lands in the bin,
//! - `prompt_tokens[b]`: their mean prompt length (inside the bin),
//! - `decode_rate[b]`: tokens/s generated while a request's context is in the bin,
//! - `decode_context[b]`: the mean context over those decode steps,
//! - `growth_rate[b]`: requests/s whose context grows across `edges[b]`
//!   (0 for b = 0). Each one crossing a stage's lower edge is migrated into
//!   that stage and recomputes `edges[b]` tokens of prefill there.
//!
//! # One stage: bins `[j, i)` on `m` instances
//! ```text
//! lam  = sum arrival_rate          mig = growth_rate[j] (0 if j = 0)
//! P    = sum arrival_rate * prefill(prompt_tokens) + mig * prefill(edges[j])
//! D    = sum decode_rate           kv  = decode-weighted mean decode_context
//! L    = edges[h+1], h the highest bin of the stage with decode_rate > 0
//! W    = P + D / thr_cap           thr_cap: decode tokens/s of one instance at
//!                                  its largest batch (KV or request limit) of kv, L
//! rho  = W / m                     overloaded when rho >= max_utilization
//! u_p  = P / m                     share of time spent in prefill steps
//! n    = the smallest batch with n = (D/m) / (1 - u_p) * step(n)   (cost model)
//! tpot = step(n) / (1 - u_p)       decode steps stretched by prefill steps
//! wait = rho^(sqrt(2(m+1)) - 1) / (m (1 - rho)) * E[S^2] / (2 E[S])
//!                                  M/G/m queue (Sakasegawa; exact M/G/1 at m = 1)
//!                                  over the stage's prefill times: E[S^2] / E[S] =
//!                                  (sum arrival_rate * prefill^2 + mig * prefill(edges[j])^2) / P
//! ttft_b = wait + prefill(prompt_tokens[b])
//! latency    = sum arrival_rate * ttft_b + mig * (wait + prefill(edges[j])) + D * tpot
//! violations = sum over b with ttft_b > slo_ttft of arrival_rate[b]
//!            + (lam + mig) if D > 0 and tpot > slo_tpot
//! cost = latency + slo_penalty_s * violations
//! ```
//! A stage with no traffic costs 0. `latency` is request-seconds per second,
//! so the total over stages divided by the total arrival rate is the
//! predicted mean end-to-end latency (Little's law); `slo_penalty_s` makes one
//! SLO violation worth that many seconds of latency, so attainment comes
//! first and mean E2E breaks ties.
//!
//! # Overload
//! With `overload_horizon_s = H > 0` an overloaded stage (`rho >= u`,
//! `u = max_utilization`) has a finite price, reported `feasible = false`:
//! ```text
//! share = u / rho                  prefill and decode keep their shares of the time there is
//! u_p   = P / m * share
//! tpot  = step(n) / (1 - u_p), n solved as above, or the largest batch's step
//!         when the decode demand exceeds it
//! wait  = wait(u) + wait'(u) * (rho - u) + max(0, rho - 1) * H / 2
//! ```
//! the M/G/m wait continued along its tangent at `u`, plus the fluid
//! backlog past `rho = 1` (growing by `rho - 1` seconds per second) averaged
//! over the horizon. Without it a transient overload of one length mode makes
//! every split infinite and the DP pools that mode with the rest, so every
//! request waits behind its prefills. Every stage may then run on any `m >= 1`.
//! With `H = 0` an overloaded stage is infeasible, as follows.
//!
//! # The DP
//! `f[i][k]` = least cost of bins `[0, i)` on exactly `k` instances:
//! `f[0][0] = 0`, `f[0][k>0] = inf`, `f[i][k] = min over j < i, 1 <= m <= k of
//! f[j][k-m] + cost(j, i, m)`, scanning j then m upwards and keeping the
//! first strict minimum. The answer is `f[B][N]`. If it is infinite (no
//! layout keeps every stage under `max_utilization`), a second DP with
//! `cost = max(0, W - m * max_utilization)` finds the layout with the least
//! excess work, reported with `feasible = false`.
//! Cost is O(B^2 N^2) in the worst case. Exact pruning: a stage needs at
//! least `m_min = floor(W / max_utilization) + 1` instances, so a stage
//! `[j, i)` gets at most `N - fewest(0..j) - fewest(i..B)` of them, where
//! `fewest` is the least total `m_min` over layouts of the bins on each side.
//! Every stage shape is computed once, and the TTFT-violation cut is swept
//! with a pointer as `m` grows (the wait only falls with `m`).
//!
//! Branch and bound, also exact: a stage's cost never rises with more
//! instances, so `floor(j, i)` = its cost on the most instances it could get
//! is a lower bound, and the cheapest chain of floors over `[0, j)` and over
//! `[i, B)` bound what the rest of any layout through `[j, i)` costs. The DP
//! first runs on a coarse grid (every `COARSE_STEP`-th edge); its layout is a
//! layout of the fine grid too, so its cost `U` bounds the optimum, and a
//! stage whose bound exceeds `U` (with a relative tolerance of 1e-9 for
//! rounding) cannot be in any optimal layout and is skipped.
//!
//! # Instance classes (a mixed pool)
//! [`partition_classes`] takes up to [`MAX_CLASSES`] classes of identical
//! instances, each a cost model and a count (say 8 x H100 + 8 x H200). A
//! stage runs on instances of one class and is priced exactly as above with
//! that class's cost model (its `W`, `thr_cap`, prefill and decode times).
//! The DP state becomes bins covered x instances used per class:
//! `f[i][k_1..k_C] = min over j < i, class c, 1 <= m <= k_c of
//! f[j][k - m e_c] + cost_c(j, i, m)`, relaxed forwards from every finite
//! `f[j][.]`, and the answer uses every instance of every class. The state
//! is the product of the (count + 1)s, hence the limit of 3 classes. Every
//! class gets at least one stage of its own, so a pool of C classes has at
//! least C stages (and needs at least C bins); a stage mixing classes would
//! need a heterogeneous-server queue and is not modelled. Pruning is the
//! exact `m_min` bound above (per class for the stage, the fewest over any
//! class for the bins either side) and a branch and bound like the one
//! above: a coarse-grid pass gives `U`, and a partial layout whose cost plus
//! the cheapest chain of stage floors over the bins left exceeds it is
//! dropped (that floor ignores how many instances the state has left, so it
//! prunes far less than with one class). With one class
//! [`partition_classes`] is [`partition`], result for result.

use crate::cost_model::{CostModel, DecodeCurve};
use crate::error::CoreError;

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Workload {
    pub edges: Vec<f64>,
    pub arrival_rate: Vec<f64>,
    pub prompt_tokens: Vec<f64>,
    pub decode_rate: Vec<f64>,
    pub decode_context: Vec<f64>,
    pub growth_rate: Vec<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QoeConfig {
    pub slo_ttft_s: f64,
    pub slo_tpot_s: f64,
    pub slo_penalty_s: f64,
    pub max_utilization: f64,
    /// Seconds an overload is priced over (0: an overloaded stage is
    /// infeasible). See "Overload" in the module doc.
    pub overload_horizon_s: f64,
}

impl Default for QoeConfig {
    fn default() -> Self {
        QoeConfig {
            slo_ttft_s: 2.0,
            slo_tpot_s: 0.1,
            slo_penalty_s: 100.0,
            max_utilization: 0.9,
            overload_horizon_s: 0.0,
        }
    }
}

/// One stage of a layout and why it costs what it costs.
#[derive(Debug, Clone, PartialEq)]
pub struct StageReport {
    /// Index of the instance class the stage runs on (0 with one class).
    pub class: usize,
    pub first_bin: usize,
    pub end_bin: usize,
    pub lo_tokens: f64,
    pub hi_tokens: f64,
    pub instances: usize,
    pub arrival_rate: f64,
    pub migration_in_rate: f64,
    pub decode_rate: f64,
    /// Work per instance as a share of its time (rho above).
    pub utilization: f64,
    pub prefill_utilization: f64,
    pub mean_ttft_s: f64,
    pub tpot_s: f64,
    pub latency_rate: f64,
    pub violation_rate: f64,
    pub ttft_ok_rate: f64,
    pub cost: f64,
    pub feasible: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Partition {
    pub stages: Vec<StageReport>,
    pub total_cost: f64,
    pub mean_e2e_s: f64,
    pub ttft_attainment: f64,
    pub tpot_attainment: f64,
    pub feasible: bool,
    /// Work beyond `max_utilization`, in instance-seconds per second.
    pub excess_work: f64,
}

fn check_vec(field: &'static str, v: &[f64], len: usize) -> Result<(), CoreError> {
    if v.len() != len {
        return Err(CoreError::invalid(
            field,
            format!("has {} values, expected {len} (one per bin)", v.len()),
        ));
    }
    if let Some((b, x)) = v
        .iter()
        .enumerate()
        .find(|(_, x)| !(x.is_finite() && **x >= 0.0))
    {
        return Err(CoreError::invalid(
            field,
            format!("bin {b} is {x}: values must be finite and >= 0"),
        ));
    }
    Ok(())
}

impl Workload {
    pub fn bins(&self) -> usize {
        self.edges.len().saturating_sub(1)
    }

    pub fn validate(&self) -> Result<(), CoreError> {
        if self.edges.len() < 2 {
            return Err(CoreError::invalid(
                "edges",
                "needs at least 2 edges (1 bin)",
            ));
        }
        if let Some((b, x)) = self
            .edges
            .iter()
            .enumerate()
            .find(|(_, x)| !(x.is_finite() && **x >= 0.0))
        {
            return Err(CoreError::invalid(
                "edges",
                format!("edge {b} is {x}: edges must be finite and >= 0"),
            ));
        }
        if let Some(b) = (1..self.edges.len()).find(|&b| self.edges[b] <= self.edges[b - 1]) {
            return Err(CoreError::invalid(
                "edges",
                format!(
                    "must be strictly increasing, but edge {b} ({}) <= edge {} ({})",
                    self.edges[b],
                    b - 1,
                    self.edges[b - 1]
                ),
            ));
        }
        let n = self.bins();
        check_vec("arrival_rate", &self.arrival_rate, n)?;
        check_vec("prompt_tokens", &self.prompt_tokens, n)?;
        check_vec("decode_rate", &self.decode_rate, n)?;
        check_vec("decode_context", &self.decode_context, n)?;
        check_vec("growth_rate", &self.growth_rate, n)?;
        if self.growth_rate[0] != 0.0 {
            return Err(CoreError::invalid(
                "growth_rate",
                "bin 0 must be 0: nothing grows into the first bin",
            ));
        }
        for b in 0..n {
            let p = self.prompt_tokens[b];
            if self.arrival_rate[b] > 0.0 && (p < self.edges[b] || p > self.edges[b + 1]) {
                return Err(CoreError::invalid(
                    "prompt_tokens",
                    format!(
                        "bin {b} is {p}, outside its bin [{}, {}]",
                        self.edges[b],
                        self.edges[b + 1]
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl QoeConfig {
    pub fn validate(&self) -> Result<(), CoreError> {
        let positive = |field: &'static str, x: f64| {
            if x.is_finite() && x > 0.0 {
                Ok(())
            } else {
                Err(CoreError::invalid(
                    field,
                    format!("must be finite and > 0, got {x}"),
                ))
            }
        };
        positive("slo_ttft_s", self.slo_ttft_s)?;
        positive("slo_tpot_s", self.slo_tpot_s)?;
        if !(self.slo_penalty_s.is_finite() && self.slo_penalty_s >= 0.0) {
            return Err(CoreError::invalid(
                "slo_penalty_s",
                format!("must be finite and >= 0, got {}", self.slo_penalty_s),
            ));
        }
        if !(self.max_utilization > 0.0 && self.max_utilization < 1.0) {
            return Err(CoreError::invalid(
                "max_utilization",
                format!("must be in (0, 1), got {}", self.max_utilization),
            ));
        }
        if !(self.overload_horizon_s.is_finite() && self.overload_horizon_s >= 0.0) {
            return Err(CoreError::invalid(
                "overload_horizon_s",
                format!("must be finite and >= 0, got {}", self.overload_horizon_s),
            ));
        }
        Ok(())
    }

    /// Whether an overloaded stage gets a finite price.
    fn prices_overload(&self) -> bool {
        self.overload_horizon_s > 0.0
    }
}

/// Coarse grid step of the first, bounding DP pass.
const COARSE_STEP: usize = 4;

/// Restrictions of one DP pass: where cuts may fall, and the bounds that
/// skip stages (empty `pre` means no skipping).
struct Bound<'b> {
    cut_allowed: &'b [bool],
    pre: &'b [f64],
    suf: &'b [f64],
    upper: f64,
}

/// Everything about a stage `[j, i)` that does not depend on its instance count.
struct StageShape {
    lam: f64,
    mig: f64,
    prefill_arrivals: f64,
    prefill_work: f64,
    mig_prefill: f64,
    decode_rate: f64,
    /// W: instance-seconds of work per second.
    work: f64,
    /// E[S^2] / (2 E[S]) of the stage's prefill times (the M/G/m residual).
    residual: f64,
    curve: Option<DecodeCurve>,
}

impl StageShape {
    fn is_empty(&self) -> bool {
        self.lam + self.mig <= 0.0 && self.decode_rate <= 0.0
    }

    /// Fewest instances the stage may run on: those that keep it under
    /// `max_utilization`, or 1 when an overload has a finite price.
    fn min_instances(&self, qoe: &QoeConfig) -> usize {
        if self.is_empty() || qoe.prices_overload() {
            1
        } else {
            ((self.work / qoe.max_utilization).floor() as usize + 1).max(1)
        }
    }
}

/// Prefix sums over bins and every stage shape, so pricing a stage is O(1).
struct Prepared<'a> {
    w: &'a Workload,
    qoe: QoeConfig,
    /// prefill(prompt_tokens[b]), running max over b (equal to the value on occupied bins).
    prefill_mono: Vec<f64>,
    cum_lam: Vec<f64>,
    cum_decode: Vec<f64>,
    /// shapes[j * (B + 1) + i] for j < i.
    shapes: Vec<StageShape>,
}

fn prefix(values: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut out = vec![0.0];
    let mut acc = 0.0;
    for v in values {
        acc += v;
        out.push(acc);
    }
    out
}

/// Result of pricing one stage on `m` instances.
struct StageCost {
    cost: f64,
    feasible: bool,
    utilization: f64,
    prefill_utilization: f64,
    wait: f64,
    tpot: f64,
    latency: f64,
    violations: f64,
    ttft_ok: f64,
    /// First bin of the stage whose TTFT misses the SLO (`i` if none).
    first_late: usize,
}

/// M/G/m wait (Sakasegawa's approximation), `residual` = E[S^2] / (2 E[S]).
fn queue_wait(rho: f64, m: f64, residual: f64) -> f64 {
    if rho <= 0.0 {
        return 0.0;
    }
    let exponent = (2.0 * (m + 1.0)).sqrt() - 1.0;
    rho.powf(exponent) / (m * (1.0 - rho)) * residual
}

/// The wait of an overloaded stage (`rho >= u`, `u` = max_utilization): the
/// M/G/m wait at `u`, continued along its tangent, plus the fluid backlog past
/// `rho = 1` averaged over the horizon (it grows by `rho - 1` seconds per second).
fn overload_wait(rho: f64, u: f64, m: f64, residual: f64, horizon: f64) -> f64 {
    let e = (2.0 * (m + 1.0)).sqrt() - 1.0;
    let slope = residual / m * u.powf(e - 1.0) * (e * (1.0 - u) + u) / ((1.0 - u) * (1.0 - u));
    queue_wait(u, m, residual) + slope * (rho - u) + (rho - 1.0).max(0.0) * horizon / 2.0
}

impl<'a> Prepared<'a> {
    // j and i index the edges, the bins and the shape table at once.
    #[allow(clippy::needless_range_loop)]
    fn new(model: &CostModel, w: &'a Workload, qoe: QoeConfig) -> Self {
        let n = w.bins();
        let mut prefill_mono = Vec::with_capacity(n);
        let mut running: f64 = 0.0;
        for b in 0..n {
            if w.arrival_rate[b] > 0.0 {
                running = running.max(model.prefill_time(w.prompt_tokens[b]));
            }
            prefill_mono.push(running);
        }
        let cum_lam = prefix(w.arrival_rate.iter().copied());
        let cum_decode = prefix(w.decode_rate.iter().copied());
        let edge_prefill: Vec<f64> = (0..n)
            .map(|j| {
                if j > 0 && w.growth_rate[j] > 0.0 {
                    model.prefill_time(w.edges[j])
                } else {
                    0.0
                }
            })
            .collect();
        let mut shapes = Vec::with_capacity((n + 1) * (n + 1));
        let empty = || StageShape {
            lam: 0.0,
            mig: 0.0,
            prefill_arrivals: 0.0,
            prefill_work: 0.0,
            mig_prefill: 0.0,
            decode_rate: 0.0,
            work: 0.0,
            residual: 0.0,
            curve: None,
        };
        for j in 0..=n {
            shapes.extend((0..=j).map(|_| empty()));
            let mig = if j > 0 && j < n {
                w.growth_rate[j]
            } else {
                0.0
            };
            let mig_prefill = if j < n { edge_prefill[j] } else { 0.0 };
            // Sums over [j, i) grow with i; summing from j (not differencing
            // prefix sums) keeps tiny rates beside large ones.
            let (mut lam, mut prefill_arrivals, mut prefill_sq, mut decode_rate, mut decode_ctx) =
                (0.0, 0.0, 0.0, 0.0, 0.0);
            let mut top: Option<usize> = None;
            for i in j + 1..=n {
                let b = i - 1;
                let (rate, prefill) = (w.arrival_rate[b], prefill_mono[b]);
                lam += rate;
                prefill_arrivals += rate * prefill;
                prefill_sq += rate * prefill * prefill;
                decode_rate += w.decode_rate[b];
                decode_ctx += w.decode_rate[b] * w.decode_context[b];
                if w.decode_rate[b] > 0.0 {
                    top = Some(b);
                }
                let prefill_work = prefill_arrivals + mig * mig_prefill;
                let second_moment = prefill_sq + mig * mig_prefill * mig_prefill;
                let residual = if prefill_work > 0.0 {
                    second_moment / (2.0 * prefill_work)
                } else {
                    0.0
                };
                let (mut work, mut curve) = (prefill_work, None);
                if decode_rate > 0.0 {
                    let mean_kv = decode_ctx / decode_rate;
                    let max_kv = top.map_or(mean_kv, |h| w.edges[h + 1]);
                    let c = model.decode_curve(mean_kv, max_kv);
                    work += decode_rate / c.max_throughput();
                    curve = Some(c);
                }
                shapes.push(StageShape {
                    lam,
                    mig,
                    prefill_arrivals,
                    prefill_work,
                    mig_prefill,
                    decode_rate,
                    work,
                    residual,
                    curve,
                });
            }
        }
        Prepared {
            w,
            qoe,
            prefill_mono,
            cum_lam,
            cum_decode,
            shapes,
        }
    }

    fn shape(&self, j: usize, i: usize) -> &StageShape {
        &self.shapes[j * (self.w.bins() + 1) + i]
    }

    /// First bin in `[from, i)` whose TTFT exceeds the SLO at this wait
    /// (`prefill_mono` is non-decreasing, so the late bins are a suffix).
    fn first_late_bin(&self, from: usize, i: usize, wait: f64) -> usize {
        let slo = self.qoe.slo_ttft_s;
        let (mut lo, mut hi) = (from, i);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if wait + self.prefill_mono[mid] > slo {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        lo
    }

    /// Price stage `[j, i)` on `m` instances; the first late bin is known to
    /// lie in `[late.0, late.1]` (pointers the DP sweeps as `m` moves).
    fn price(&self, j: usize, i: usize, m: usize, late: (usize, usize)) -> StageCost {
        let s = self.shape(j, i);
        let q = &self.qoe;
        let mf = m as f64;
        let utilization = s.work / mf;
        let prefill_utilization = s.prefill_work / mf;
        let mut out = StageCost {
            cost: 0.0,
            feasible: true,
            utilization,
            prefill_utilization,
            wait: 0.0,
            tpot: 0.0,
            latency: 0.0,
            violations: 0.0,
            ttft_ok: 0.0,
            first_late: i,
        };
        if s.is_empty() {
            return out;
        }
        let over = utilization >= q.max_utilization;
        if over {
            out.feasible = false;
            if !q.prices_overload() {
                out.cost = f64::INFINITY;
                return out;
            }
        }
        // Overloaded, prefill and decode keep their shares of the time the stage has.
        let share = if over {
            q.max_utilization / utilization
        } else {
            1.0
        };
        let busy = 1.0 - prefill_utilization * share;
        if let Some(curve) = &s.curve {
            match curve.solve(s.decode_rate / mf / busy) {
                Some((_, step)) => out.tpot = step / busy,
                // Decode demand beyond the largest batch: it runs full, the rest waits.
                None if over => out.tpot = curve.step(curve.n_cap()) / busy,
                None => {
                    out.feasible = false;
                    out.cost = f64::INFINITY;
                    return out;
                }
            }
        }
        out.wait = if over {
            overload_wait(
                utilization,
                q.max_utilization,
                mf,
                s.residual,
                q.overload_horizon_s,
            )
        } else {
            queue_wait(utilization, mf, s.residual)
        };
        out.latency = s.lam * out.wait
            + s.prefill_arrivals
            + s.mig * (out.wait + s.mig_prefill)
            + s.decode_rate * out.tpot;
        let first_late = self.first_late_bin(late.0.max(j), late.1.min(i), out.wait);
        out.first_late = first_late;
        let late = self.cum_lam[i] - self.cum_lam[first_late];
        out.ttft_ok = s.lam - late;
        out.violations = late;
        if s.decode_rate > 0.0 && out.tpot > q.slo_tpot_s {
            out.violations += s.lam + s.mig;
        }
        out.cost = out.latency + q.slo_penalty_s * out.violations;
        out
    }

    fn excess(&self, j: usize, i: usize, m: usize) -> f64 {
        (self.shape(j, i).work - m as f64 * self.qoe.max_utilization).max(0.0)
    }

    fn report(&self, j: usize, i: usize, m: usize) -> StageReport {
        let s = self.shape(j, i);
        let c = self.price(j, i, m, (j, i));
        StageReport {
            class: 0,
            first_bin: j,
            end_bin: i,
            lo_tokens: self.w.edges[j],
            hi_tokens: self.w.edges[i],
            instances: m,
            arrival_rate: s.lam,
            migration_in_rate: s.mig,
            decode_rate: s.decode_rate,
            utilization: c.utilization,
            prefill_utilization: c.prefill_utilization,
            mean_ttft_s: if s.lam > 0.0 {
                c.wait + s.prefill_arrivals / s.lam
            } else {
                0.0
            },
            tpot_s: c.tpot,
            latency_rate: c.latency,
            violation_rate: c.violations,
            ttft_ok_rate: c.ttft_ok,
            cost: c.cost,
            feasible: c.feasible,
        }
    }

    fn summarize(&self, cuts: &[(usize, usize, usize)]) -> Partition {
        let stages: Vec<StageReport> = cuts.iter().map(|&(j, i, m)| self.report(j, i, m)).collect();
        let excess = cuts.iter().map(|&(j, i, m)| self.excess(j, i, m)).sum();
        self.totals(stages, excess)
    }

    /// The layout's totals from its stage reports (any mix of classes: the
    /// workload and the QoE are the same for every class).
    fn totals(&self, stages: Vec<StageReport>, excess: f64) -> Partition {
        let feasible = stages.iter().all(|s| s.feasible);
        // Finite when every stage has a price (an overload has one with a horizon).
        let priced = stages.iter().all(|s| s.cost.is_finite());
        let total_lam = self.cum_lam[self.w.bins()];
        let total_decode = self.cum_decode[self.w.bins()];
        let sum = |f: fn(&StageReport) -> f64| stages.iter().map(f).sum::<f64>();
        let latency = sum(|s| s.latency_rate);
        let tpot_ok = stages
            .iter()
            .filter(|s| s.cost.is_finite() && s.tpot_s <= self.qoe.slo_tpot_s)
            .map(|s| s.decode_rate)
            .sum::<f64>();
        let ratio = |num: f64, den: f64| if den > 0.0 { num / den } else { 1.0 };
        Partition {
            total_cost: if priced {
                sum(|s| s.cost)
            } else {
                f64::INFINITY
            },
            mean_e2e_s: if priced {
                ratio(latency, total_lam)
            } else {
                f64::INFINITY
            },
            ttft_attainment: if priced {
                ratio(sum(|s| s.ttft_ok_rate), total_lam)
            } else {
                0.0
            },
            tpot_attainment: if priced {
                ratio(tpot_ok, total_decode)
            } else {
                0.0
            },
            feasible,
            excess_work: excess,
            stages,
        }
    }

    /// Least total `m_min` over layouts of `[0, j)` (forward) and of `[i, B)`
    /// (backward): exact lower bounds on the instances either side needs.
    fn fewest_instances(&self, excess_mode: bool) -> (Vec<usize>, Vec<usize>) {
        fewest(self.w.bins(), |j, i| {
            if excess_mode {
                1
            } else {
                self.shape(j, i).min_instances(&self.qoe)
            }
        })
    }

    /// Costs of stage `[j, i)` for the instance counts that can still be part
    /// of a layout cheaper than `b.upper`; returns their range `(first, top)`.
    ///
    /// A layout using this stage on `m` instances costs at least
    /// `prior_min[k_max - m] + cost(m) + suf[i]` (`k_max = n - after[i]`).
    /// `cost(m)` never rises with `m` and `prior_min[k_max - m]` never falls,
    /// so: the floor `cost(m_hi)` trims the top of the range unpriced, and
    /// pricing downwards stops once `prior_min[k_max - m_lo] + cost(m)` fails.
    #[allow(clippy::too_many_arguments)]
    fn bounded_costs(
        &self,
        j: usize,
        i: usize,
        m_lo: usize,
        m_hi: usize,
        k_max: usize,
        prior_min: &[f64],
        b: &Bound,
        stage_costs: &mut [f64],
    ) -> Option<(usize, usize)> {
        let suf = b.suf[i];
        let floor = self.price(j, i, m_hi, (j, i));
        if !floor.cost.is_finite() || b.pre[j] + floor.cost + suf > b.upper {
            return None;
        }
        let mut top = m_hi;
        while prior_min[k_max - top] + floor.cost + suf > b.upper {
            if top == m_lo {
                return None;
            }
            top -= 1;
        }
        let best_prior = prior_min[k_max - m_lo];
        let mut late_to = i;
        let mut first = top + 1;
        for m in (m_lo..=top).rev() {
            let (c, first_late) = if m == m_hi {
                (floor.cost, floor.first_late)
            } else {
                let priced = self.price(j, i, m, (j, late_to));
                (priced.cost, priced.first_late)
            };
            if !c.is_finite() || best_prior + c + suf > b.upper {
                break;
            }
            // The wait only grows as m falls, so the late cut only moves left.
            late_to = first_late;
            stage_costs[m] = if prior_min[k_max - m] + c + suf > b.upper {
                f64::INFINITY
            } else {
                c
            };
            first = m;
        }
        (first <= top).then_some((first, top))
    }

    /// Cheapest chain of stage floors over `[0, j)` and over `[i, B)`.
    fn floor_bounds(&self, n: usize, before: &[usize], after: &[usize]) -> (Vec<f64>, Vec<f64>) {
        let bins = self.w.bins();
        let floor = |j: usize, i: usize| match n.checked_sub(before[j].saturating_add(after[i])) {
            Some(m) if m >= 1 => self.price(j, i, m, (j, i)).cost,
            _ => f64::INFINITY,
        };
        let mut floors = vec![f64::INFINITY; (bins + 1) * (bins + 1)];
        for j in 0..bins {
            for i in j + 1..=bins {
                floors[j * (bins + 1) + i] = floor(j, i);
            }
        }
        let mut pre = vec![f64::INFINITY; bins + 1];
        pre[0] = 0.0;
        for i in 1..=bins {
            pre[i] = (0..i)
                .map(|j| pre[j] + floors[j * (bins + 1) + i])
                .fold(f64::INFINITY, f64::min);
        }
        let mut suf = vec![f64::INFINITY; bins + 1];
        suf[bins] = 0.0;
        for j in (0..bins).rev() {
            suf[j] = (j + 1..=bins)
                .map(|i| suf[i] + floors[j * (bins + 1) + i])
                .fold(f64::INFINITY, f64::min);
        }
        (pre, suf)
    }

    /// Total cost of a layout found by `solve`.
    fn layout_cost(&self, cuts: &[(usize, usize, usize)]) -> f64 {
        cuts.iter()
            .map(|&(j, i, m)| self.price(j, i, m, (j, i)).cost)
            .sum()
    }

    /// The exact DP with branch and bound (see the module doc).
    fn solve_pruned(&self, instances: usize) -> Option<Vec<(usize, usize, usize)>> {
        let bins = self.w.bins();
        if bins <= 2 * COARSE_STEP {
            return self.solve(instances, false, None);
        }
        let coarse: Vec<bool> = (0..=bins)
            .map(|b| b % COARSE_STEP == 0 || b == bins)
            .collect();
        let upper = self
            .solve(
                instances,
                false,
                Some(Bound {
                    cut_allowed: &coarse,
                    pre: &[],
                    suf: &[],
                    upper: 0.0,
                }),
            )
            .map_or(f64::INFINITY, |cuts| self.layout_cost(&cuts));
        if !upper.is_finite() {
            return self.solve(instances, false, None);
        }
        let (before, after) = self.fewest_instances(false);
        let (pre, suf) = self.floor_bounds(instances, &before, &after);
        let all = vec![true; bins + 1];
        let bound = Bound {
            cut_allowed: &all,
            pre: &pre,
            suf: &suf,
            upper: upper * (1.0 + 1e-9) + 1e-12,
        };
        self.solve(instances, false, Some(bound))
    }

    /// The DP over bins and instances; `excess_mode` minimises overload instead
    /// of QoE; `bound` restricts cut points and skips stages that cannot beat it.
    // Bins and instance counts index several tables at once; plain ranges read clearer.
    #[allow(clippy::needless_range_loop)]
    fn solve(
        &self,
        instances: usize,
        excess_mode: bool,
        bound: Option<Bound>,
    ) -> Option<Vec<(usize, usize, usize)>> {
        let bins = self.w.bins();
        let n = instances;
        let width = n + 1;
        let (before, after) = self.fewest_instances(excess_mode);
        if before[bins] > n {
            return None;
        }
        let mut f = vec![f64::INFINITY; (bins + 1) * width];
        let mut choice = vec![(0usize, 0usize); (bins + 1) * width];
        f[0] = 0.0;
        let mut stage_costs = vec![f64::INFINITY; width];
        let mut reversed = vec![f64::INFINITY; width];
        // prior_min[j][t] = min over k <= t of f[j][k]: a valid lower bound on
        // any f[j][k <= t] even where pruning left f[j] overestimated.
        let mut prior_min = vec![f64::INFINITY; (bins + 1) * width];
        for i in 1..=bins {
            let done = i - 1;
            let mut running = f64::INFINITY;
            for t in 0..width {
                running = running.min(f[done * width + t]);
                prior_min[done * width + t] = running;
            }
            if after[i] > n || bound.as_ref().is_some_and(|b| !b.cut_allowed[i]) {
                continue;
            }
            for j in 0..i {
                if let Some(b) = &bound {
                    if !b.cut_allowed[j]
                        || f[j * width..(j + 1) * width].iter().all(|x| !x.is_finite())
                    {
                        continue;
                    }
                }
                // Instances left for this stage once both sides have their fewest.
                let Some(m_hi) = n.checked_sub(before[j].saturating_add(after[i])) else {
                    continue;
                };
                let m_lo = if excess_mode {
                    1
                } else {
                    self.shape(j, i).min_instances(&self.qoe)
                };
                if m_lo > m_hi {
                    continue;
                }
                let (first, top) = match bound.as_ref().filter(|b| !b.pre.is_empty()) {
                    Some(b) => {
                        let prior_min = &prior_min[j * width..(j + 1) * width];
                        match self.bounded_costs(
                            j,
                            i,
                            m_lo,
                            m_hi,
                            n - after[i],
                            prior_min,
                            b,
                            &mut stage_costs,
                        ) {
                            Some(range) => range,
                            None => continue,
                        }
                    }
                    None => {
                        let mut first = usize::MAX;
                        let mut late_from = j;
                        for m in m_lo..=m_hi {
                            let v = if excess_mode {
                                self.excess(j, i, m)
                            } else {
                                let c = self.price(j, i, m, (late_from, i));
                                if c.cost.is_finite() {
                                    late_from = c.first_late;
                                }
                                c.cost
                            };
                            stage_costs[m] = v;
                            if v.is_finite() && first == usize::MAX {
                                first = m;
                            }
                        }
                        if first == usize::MAX {
                            continue;
                        }
                        (first, m_hi)
                    }
                };
                // reversed[t] = f[j][n - t]: f[j][k - m] sits at reversed[n - k + m],
                // so the scan over m reads both arrays forwards.
                for t in 0..width {
                    reversed[t] = f[j * width + n - t];
                }
                for k in (before[j] + first)..=(n - after[i]) {
                    let base = n - k;
                    let top = (k - before[j]).min(top);
                    if top < first {
                        continue;
                    }
                    let costs = &stage_costs[first..=top];
                    let prior = &reversed[base + first..=base + top];
                    let best = prior
                        .iter()
                        .zip(costs)
                        .map(|(a, b)| a + b)
                        .fold(f64::INFINITY, f64::min);
                    let slot = i * width + k;
                    if best < f[slot] {
                        let offset = prior
                            .iter()
                            .zip(costs)
                            .position(|(a, b)| a + b == best)
                            .unwrap_or(0);
                        f[slot] = best;
                        choice[slot] = (j, first + offset);
                    }
                }
            }
        }
        if !f[bins * width + n].is_finite() {
            return None;
        }
        let mut cuts = Vec::new();
        let (mut i, mut k) = (bins, n);
        while i > 0 {
            let (j, m) = choice[i * width + k];
            cuts.push((j, i, m));
            i = j;
            k -= m;
        }
        cuts.reverse();
        Some(cuts)
    }
}

/// The best layout of `instances` instances for `workload` (see the module doc).
pub fn partition(
    model: &CostModel,
    workload: &Workload,
    instances: usize,
    qoe: QoeConfig,
) -> Result<Partition, CoreError> {
    workload.validate()?;
    qoe.validate()?;
    if instances == 0 {
        return Err(CoreError::invalid("instances", "must be >= 1"));
    }
    let prepared = Prepared::new(model, workload, qoe);
    let cuts = match prepared.solve_pruned(instances) {
        Some(cuts) => cuts,
        None => prepared
            .solve(instances, true, None)
            .expect("one stage on every instance is always a layout"),
    };
    Ok(prepared.summarize(&cuts))
}

/// Check a layout given as cuts and per-stage counts; returns its stages.
fn layout_stages(
    bins: usize,
    cuts: &[usize],
    instances: &[usize],
) -> Result<Vec<(usize, usize, usize)>, CoreError> {
    if cuts.len() < 2 || cuts[0] != 0 || *cuts.last().unwrap() != bins {
        return Err(CoreError::invalid(
            "cuts",
            format!("must start at 0 and end at the bin count {bins}"),
        ));
    }
    if cuts.windows(2).any(|w| w[1] <= w[0]) {
        return Err(CoreError::invalid(
            "cuts",
            "must be strictly increasing bin indices",
        ));
    }
    if instances.len() != cuts.len() - 1 {
        return Err(CoreError::invalid(
            "instances",
            format!(
                "has {} counts for {} stages",
                instances.len(),
                cuts.len() - 1
            ),
        ));
    }
    if instances.contains(&0) {
        return Err(CoreError::invalid(
            "instances",
            "every stage needs at least 1 instance",
        ));
    }
    Ok((0..instances.len())
        .map(|s| (cuts[s], cuts[s + 1], instances[s]))
        .collect())
}

/// Price a given layout: stage `s` covers bins `[cuts[s], cuts[s+1])` on
/// `instances[s]` instances; `cuts` starts at 0 and ends at the bin count.
pub fn evaluate(
    model: &CostModel,
    workload: &Workload,
    qoe: QoeConfig,
    cuts: &[usize],
    instances: &[usize],
) -> Result<Partition, CoreError> {
    workload.validate()?;
    qoe.validate()?;
    let stages = layout_stages(workload.bins(), cuts, instances)?;
    Ok(Prepared::new(model, workload, qoe).summarize(&stages))
}

/// A layout thinned so that every stage earns its keep: neighbour stages merge, the cheapest
/// merge first, while a merge raises the predicted cost by at most `stage_gain` of it. The DP's
/// fluid queueing sees no loss of pooling in small stages and prices each stage's mix at its
/// top edge, so unthinned it splits short-prompt traffic into many stages of one or two
/// instances that do worse than one. An infeasible layout, or `stage_gain <= 0`, is returned as
/// given (priced).
pub fn merge_stages(
    model: &CostModel,
    workload: &Workload,
    qoe: QoeConfig,
    cuts: &[usize],
    instances: &[usize],
    stage_gain: f64,
) -> Result<Partition, CoreError> {
    workload.validate()?;
    qoe.validate()?;
    if !(stage_gain.is_finite() && stage_gain >= 0.0) {
        return Err(CoreError::invalid(
            "stage_gain",
            format!("must be finite and >= 0, got {stage_gain}"),
        ));
    }
    // (first bin, end bin, instances) per stage.
    type Stages = Vec<(usize, usize, usize)>;
    let mut stages: Stages = layout_stages(workload.bins(), cuts, instances)?;
    let prepared = Prepared::new(model, workload, qoe);
    let mut layout = prepared.summarize(&stages);
    if stage_gain <= 0.0 || !layout.total_cost.is_finite() {
        return Ok(layout);
    }
    while stages.len() > 1 {
        let mut best: Option<(Partition, Stages)> = None;
        for k in 0..stages.len() - 1 {
            let mut merged = stages.clone();
            let (j, _, m1) = merged[k];
            let (_, i, m2) = merged.remove(k + 1);
            merged[k] = (j, i, m1 + m2);
            let trial = prepared.summarize(&merged);
            if trial.total_cost.is_finite()
                && best
                    .as_ref()
                    .is_none_or(|(b, _)| trial.total_cost < b.total_cost)
            {
                best = Some((trial, merged));
            }
        }
        match best {
            Some((trial, merged))
                if trial.total_cost - layout.total_cost <= stage_gain * layout.total_cost =>
            {
                layout = trial;
                stages = merged;
            }
            _ => break,
        }
    }
    Ok(layout)
}

// --------------------------------------------------------------------------
// Instance classes: a mixed pool (say 8 x H100 + 8 x H200)
// --------------------------------------------------------------------------

/// Most instance classes [`partition_classes`] takes: its DP state is the
/// product of the per-class instance counts.
pub const MAX_CLASSES: usize = 3;

/// Identical instances sharing one cost model.
#[derive(Debug, Clone, Copy)]
pub struct InstanceClass<'m> {
    pub model: &'m CostModel,
    pub count: usize,
}

fn validate_classes(classes: &[InstanceClass], limit: usize) -> Result<(), CoreError> {
    if classes.is_empty() {
        return Err(CoreError::invalid("classes", "needs at least one class"));
    }
    if classes.len() > limit {
        return Err(CoreError::invalid(
            "classes",
            format!(
                "has {} classes; the DP supports at most {limit} (its state is the \
                 product of the per-class instance counts)",
                classes.len()
            ),
        ));
    }
    if let Some(c) = classes.iter().position(|c| c.count == 0) {
        return Err(CoreError::invalid(
            format!("classes[{c}].count"),
            "must be >= 1",
        ));
    }
    Ok(())
}

/// Least total `need(j, i)` over layouts of `[0, j)` (forward) and of `[i, B)`.
fn fewest(bins: usize, need: impl Fn(usize, usize) -> usize) -> (Vec<usize>, Vec<usize>) {
    let mut before = vec![usize::MAX; bins + 1];
    before[0] = 0;
    for i in 1..=bins {
        before[i] = (0..i)
            .map(|j| before[j].saturating_add(need(j, i)))
            .min()
            .unwrap_or(usize::MAX);
    }
    let mut after = vec![usize::MAX; bins + 1];
    after[bins] = 0;
    for j in (0..bins).rev() {
        after[j] = (j + 1..=bins)
            .map(|i| after[i].saturating_add(need(j, i)))
            .min()
            .unwrap_or(usize::MAX);
    }
    (before, after)
}

/// A stage of a mixed layout: bins `[j, i)` on `m` instances of class `c`.
type ClassStage = (usize, usize, usize, usize);

/// Restrictions of one class-DP pass (see `Mixed::solve`).
struct MixedBound<'b> {
    cut_allowed: &'b [bool],
    /// Lower bounds on the cost of bins `[i, B)`; empty: no pruning.
    suf: &'b [f64],
    upper: f64,
}

/// The DP over bins and a vector of per-class instance counts.
struct Mixed<'a> {
    preps: Vec<Prepared<'a>>,
    counts: Vec<usize>,
    /// State `s` holds `(s / strides[c]) % (counts[c] + 1)` instances of class c.
    strides: Vec<usize>,
    /// Instances used in each state, all classes together.
    used: Vec<usize>,
    width: usize,
}

impl<'a> Mixed<'a> {
    fn new(classes: &[InstanceClass], w: &'a Workload, qoe: QoeConfig) -> Self {
        let counts: Vec<usize> = classes.iter().map(|c| c.count).collect();
        let mut strides = Vec::with_capacity(counts.len());
        let mut width = 1;
        for &n in &counts {
            strides.push(width);
            width *= n + 1;
        }
        let used = (0..width)
            .map(|s| {
                (0..counts.len())
                    .map(|c| (s / strides[c]) % (counts[c] + 1))
                    .sum()
            })
            .collect();
        Mixed {
            preps: classes
                .iter()
                .map(|c| Prepared::new(c.model, w, qoe))
                .collect(),
            counts,
            strides,
            used,
            width,
        }
    }

    /// Fewest instances of class `c` that keep stage `[j, i)` feasible (1 when
    /// minimising excess work).
    fn need(&self, excess_mode: bool, c: usize, j: usize, i: usize) -> usize {
        if excess_mode {
            1
        } else {
            let p = &self.preps[c];
            p.shape(j, i).min_instances(&p.qoe)
        }
    }

    /// Lower and upper bounds on the instances the bins either side of a stage
    /// need: the fewest `need` of any class.
    fn fewest(&self, excess_mode: bool) -> (Vec<usize>, Vec<usize>) {
        let classes = self.counts.len();
        fewest(self.preps[0].w.bins(), |j, i| {
            (0..classes)
                .map(|c| self.need(excess_mode, c, j, i))
                .min()
                .unwrap_or(1)
        })
    }

    /// `suf[j]`: a lower bound on the cost of bins `[j, B)` in any layout,
    /// the cheapest chain of stage floors (a stage on the most instances of
    /// the best class it could get; cost never rises with instances).
    fn suffix_floors(&self, before: &[usize], after: &[usize]) -> Vec<f64> {
        let bins = self.preps[0].w.bins();
        let n: usize = self.counts.iter().sum();
        let floor = |j: usize, i: usize| {
            let room = n.saturating_sub(before[j].saturating_add(after[i]));
            (0..self.counts.len())
                .map(|c| match room.min(self.counts[c]) {
                    0 => f64::INFINITY,
                    m => self.preps[c].price(j, i, m, (j, i)).cost,
                })
                .fold(f64::INFINITY, f64::min)
        };
        let mut suf = vec![f64::INFINITY; bins + 1];
        suf[bins] = 0.0;
        for j in (0..bins).rev() {
            suf[j] = (j + 1..=bins)
                .map(|i| suf[i] + floor(j, i))
                .fold(f64::INFINITY, f64::min);
        }
        suf
    }

    /// The exact class DP with branch and bound, as for one class: a pass on
    /// the coarse grid gives an upper bound `U`; the fine pass drops every
    /// partial layout whose cost plus `suf` exceeds it.
    fn solve_pruned(&self) -> Option<Vec<ClassStage>> {
        let bins = self.preps[0].w.bins();
        if bins <= 2 * COARSE_STEP {
            return self.solve(false, None);
        }
        let coarse: Vec<bool> = (0..=bins)
            .map(|b| b % COARSE_STEP == 0 || b == bins)
            .collect();
        let unbounded = MixedBound {
            cut_allowed: &coarse,
            suf: &[],
            upper: f64::INFINITY,
        };
        let upper = self
            .solve(false, Some(unbounded))
            .map_or(f64::INFINITY, |stages| self.layout_cost(&stages));
        if !upper.is_finite() {
            return self.solve(false, None);
        }
        let (before, after) = self.fewest(false);
        let suf = self.suffix_floors(&before, &after);
        let all = vec![true; bins + 1];
        self.solve(
            false,
            Some(MixedBound {
                cut_allowed: &all,
                suf: &suf,
                upper: upper * (1.0 + 1e-9) + 1e-12,
            }),
        )
    }

    fn layout_cost(&self, stages: &[ClassStage]) -> f64 {
        stages
            .iter()
            .map(|&(j, i, m, c)| self.preps[c].price(j, i, m, (j, i)).cost)
            .sum()
    }

    /// `f[i][s]` = least cost of bins `[0, i)` using exactly the per-class
    /// counts of state `s`; relaxed forwards from every finite `f[j][s]` by
    /// a stage `[j, i)` on `m` instances of one class. Exact pruning as in the
    /// one-class DP: a stage needs at least `m_min` instances of its class,
    /// and the bins on either side at least the fewest `m_min` of any class.
    /// With a bound, cuts fall only where allowed and a partial layout whose
    /// cost plus `suf` exceeds `upper` is dropped.
    #[allow(clippy::needless_range_loop)]
    fn solve(&self, excess_mode: bool, bound: Option<MixedBound>) -> Option<Vec<ClassStage>> {
        let bins = self.preps[0].w.bins();
        let n: usize = self.counts.iter().sum();
        let width = self.width;
        let classes = self.counts.len();
        let (before, after) = self.fewest(excess_mode);
        if before[bins] > n {
            return None;
        }
        let allowed = |b: usize| bound.as_ref().is_none_or(|x| x.cut_allowed[b]);
        let (suf, upper) = match &bound {
            Some(x) if !x.suf.is_empty() => (x.suf, x.upper),
            _ => (&[][..], f64::INFINITY),
        };
        let rest = |i: usize| if suf.is_empty() { 0.0 } else { suf[i] };
        let mut f = vec![f64::INFINITY; (bins + 1) * width];
        let mut choice = vec![(0usize, 0usize, 0usize); (bins + 1) * width];
        f[0] = 0.0;
        let mut live: Vec<Vec<usize>> = vec![Vec::new(); bins + 1];
        let mut least = vec![f64::INFINITY; bins + 1];
        live[0].push(0);
        least[0] = 0.0;
        let mut stage_costs = vec![f64::INFINITY; n + 1];
        for i in 1..=bins {
            if i > 1 {
                let row = &f[(i - 1) * width..i * width];
                let keep = upper - rest(i - 1);
                live[i - 1] = (0..width)
                    .filter(|&s| row[s].is_finite() && row[s] <= keep)
                    .collect();
                least[i - 1] = live[i - 1]
                    .iter()
                    .map(|&s| row[s])
                    .fold(f64::INFINITY, f64::min);
            }
            if after[i] > n || !allowed(i) {
                continue;
            }
            let most = n - after[i];
            let slack = upper - rest(i);
            for j in 0..i {
                if live[j].is_empty() || !allowed(j) {
                    continue;
                }
                let Some(room) = n.checked_sub(before[j].saturating_add(after[i])) else {
                    continue;
                };
                for c in 0..classes {
                    let m_hi = room.min(self.counts[c]);
                    let m_lo = self.need(excess_mode, c, j, i);
                    if m_lo > m_hi {
                        continue;
                    }
                    // Price downwards: the cost only rises as m falls, and
                    // the first late bin only moves left.
                    let mut first = m_hi + 1;
                    let mut late_to = i;
                    for m in (m_lo..=m_hi).rev() {
                        let v = if excess_mode {
                            self.preps[c].excess(j, i, m)
                        } else {
                            let priced = self.preps[c].price(j, i, m, (j, late_to));
                            late_to = priced.first_late;
                            priced.cost
                        };
                        if !v.is_finite() || least[j] + v > slack {
                            break;
                        }
                        stage_costs[m] = v;
                        first = m;
                    }
                    if first > m_hi {
                        continue;
                    }
                    let (stride, cap) = (self.strides[c], self.counts[c]);
                    for &s in &live[j] {
                        let have = (s / stride) % (cap + 1);
                        let Some(left) = most.checked_sub(self.used[s]) else {
                            continue;
                        };
                        let top = m_hi.min(cap - have).min(left);
                        let base = f[j * width + s];
                        if top < first || base + stage_costs[top] > slack {
                            continue;
                        }
                        for m in first..=top {
                            let v = base + stage_costs[m];
                            let slot = i * width + s + m * stride;
                            if v < f[slot] {
                                f[slot] = v;
                                choice[slot] = (j, c, m);
                            }
                        }
                    }
                }
            }
        }
        let full = width - 1;
        if !f[bins * width + full].is_finite() {
            return None;
        }
        let mut stages = Vec::new();
        let (mut i, mut s) = (bins, full);
        while i > 0 {
            let (j, c, m) = choice[i * width + s];
            stages.push((j, i, m, c));
            s -= m * self.strides[c];
            i = j;
        }
        stages.reverse();
        Some(stages)
    }

    fn summarize(&self, stages: &[ClassStage]) -> Partition {
        let reports = stages
            .iter()
            .map(|&(j, i, m, c)| StageReport {
                class: c,
                ..self.preps[c].report(j, i, m)
            })
            .collect();
        let excess = stages
            .iter()
            .map(|&(j, i, m, c)| self.preps[c].excess(j, i, m))
            .sum();
        self.preps[0].totals(reports, excess)
    }
}

/// The best layout of a mixed pool: `classes[c].count` instances of cost
/// model `classes[c].model`, every stage on instances of one class (see the
/// module doc). With one class this is [`partition`].
pub fn partition_classes(
    classes: &[InstanceClass],
    workload: &Workload,
    qoe: QoeConfig,
) -> Result<Partition, CoreError> {
    validate_classes(classes, MAX_CLASSES)?;
    if let [one] = classes {
        return partition(one.model, workload, one.count, qoe);
    }
    workload.validate()?;
    qoe.validate()?;
    if workload.bins() < classes.len() {
        return Err(CoreError::invalid(
            "classes",
            format!(
                "{} classes need at least {} bins: each class runs its own stages",
                classes.len(),
                classes.len()
            ),
        ));
    }
    let mixed = Mixed::new(classes, workload, qoe);
    let stages = match mixed.solve_pruned() {
        Some(stages) => stages,
        None => mixed
            .solve(true, None)
            .expect("one stage per class is always a layout when bins >= classes"),
    };
    Ok(mixed.summarize(&stages))
}

/// Price a given mixed layout: as [`evaluate`], stage `s` on `instances[s]`
/// instances of class `stage_classes[s]`; each class must be used exactly.
pub fn evaluate_classes(
    classes: &[InstanceClass],
    workload: &Workload,
    qoe: QoeConfig,
    cuts: &[usize],
    instances: &[usize],
    stage_classes: &[usize],
) -> Result<Partition, CoreError> {
    validate_classes(classes, usize::MAX)?;
    workload.validate()?;
    qoe.validate()?;
    let stages = layout_stages(workload.bins(), cuts, instances)?;
    if stage_classes.len() != stages.len() {
        return Err(CoreError::invalid(
            "stage_classes",
            format!(
                "has {} classes for {} stages",
                stage_classes.len(),
                stages.len()
            ),
        ));
    }
    if let Some(s) = stage_classes.iter().position(|&c| c >= classes.len()) {
        return Err(CoreError::invalid(
            "stage_classes",
            format!(
                "stage {s} names class {}, but there are {} classes",
                stage_classes[s],
                classes.len()
            ),
        ));
    }
    for (c, class) in classes.iter().enumerate() {
        let used: usize = (0..stages.len())
            .filter(|&s| stage_classes[s] == c)
            .map(|s| instances[s])
            .sum();
        if used != class.count {
            return Err(CoreError::invalid(
                "stage_classes",
                format!(
                    "class {c} has {} instances, the stages use {used}",
                    class.count
                ),
            ));
        }
    }
    if let [one] = classes {
        return evaluate(one.model, workload, qoe, cuts, instances);
    }
    let mixed = Mixed::new(classes, workload, qoe);
    let staged: Vec<ClassStage> = stages
        .iter()
        .zip(stage_classes)
        .map(|(&(j, i, m), &c)| (j, i, m, c))
        .collect();
    Ok(mixed.summarize(&staged))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::cost_model::tests::h100 as model;

    /// The unpruned and pruned DPs agree: both infeasible, or the same cost (then true).
    fn same_cost(plain: Option<f64>, pruned: Option<f64>, what: &str) -> bool {
        match (plain, pruned) {
            (Some(a), Some(b)) => {
                assert!(
                    (a - b).abs() <= 1e-9 * a.abs().max(1.0),
                    "{what}: {a} vs {b}"
                );
                true
            }
            (None, None) => false,
            other => panic!("{what}: feasibility differs {other:?}"),
        }
    }

    /// A bimodal workload: chats around 500 tokens, documents around 60K.
    fn bimodal(scale: f64) -> Workload {
        let edges = vec![0.0, 1_024.0, 8_192.0, 32_768.0, 131_072.0];
        Workload {
            arrival_rate: vec![20.0 * scale, 0.0, 0.0, 0.3 * scale],
            prompt_tokens: vec![500.0, 0.0, 0.0, 60_000.0],
            decode_rate: vec![20.0 * scale * 200.0, 0.0, 0.0, 0.3 * scale * 200.0],
            decode_context: vec![600.0, 0.0, 0.0, 60_100.0],
            growth_rate: vec![0.0; 4],
            edges,
        }
    }

    /// Every way to cut `bins` bins into contiguous stages, as cut lists `[0, ..., bins]`.
    fn cut_sets(bins: usize) -> impl Iterator<Item = Vec<usize>> {
        (0u32..(1 << (bins - 1))).map(move |mask| {
            let mut cuts = vec![0];
            cuts.extend((1..bins).filter(|b| mask & (1 << (b - 1)) != 0));
            cuts.push(bins);
            cuts
        })
    }

    fn brute_force(model: &CostModel, w: &Workload, n: usize, q: QoeConfig) -> f64 {
        let mut best = f64::INFINITY;
        for cuts in cut_sets(w.bins()) {
            let k = cuts.len() - 1;
            if k > n {
                continue;
            }
            let mut counts = vec![1; k];
            counts[k - 1] = n - (k - 1);
            loop {
                let p = evaluate(model, w, q, &cuts, &counts).unwrap();
                best = best.min(p.total_cost);
                // Next composition of n into k positive parts.
                let Some(pos) = (0..k - 1)
                    .rev()
                    .find(|&s| counts[s + 1..].iter().sum::<usize>() > k - 1 - s)
                else {
                    break;
                };
                counts[pos] += 1;
                for c in counts.iter_mut().take(k - 1).skip(pos + 1) {
                    *c = 1;
                }
                let used: usize = counts[..k - 1].iter().sum();
                counts[k - 1] = n - used;
            }
        }
        best
    }

    #[test]
    fn separates_chats_from_documents() {
        let p = partition(&model(), &bimodal(1.0), 4, QoeConfig::default()).unwrap();
        assert!(p.feasible, "{p:?}");
        assert!(p.stages.len() >= 2, "{p:?}");
        assert_eq!(p.stages.iter().map(|s| s.instances).sum::<usize>(), 4);
        assert!(p.mean_e2e_s.is_finite() && p.mean_e2e_s > 0.0);
    }

    fn priced_overload() -> QoeConfig {
        QoeConfig {
            overload_horizon_s: 60.0,
            ..QoeConfig::default()
        }
    }

    #[test]
    fn dp_matches_brute_force() {
        let m = model();
        for scale in [0.2, 1.0, 3.0, 12.0] {
            for (n, q) in (1..=5).flat_map(|n| [(n, QoeConfig::default()), (n, priced_overload())])
            {
                let w = bimodal(scale);
                let p = partition(&m, &w, n, q).unwrap();
                let best = brute_force(&m, &w, n, q);
                if best.is_finite() {
                    assert!(
                        (p.total_cost - best).abs() <= 1e-9 * best.max(1.0),
                        "n {n} scale {scale}: {} vs {best}",
                        p.total_cost
                    );
                } else {
                    assert!(!p.feasible);
                }
            }
        }
    }

    /// Deterministic pseudo-random workload over `bins` log-spaced bins.
    fn scattered(bins: usize, seed: u64, scale: f64) -> Workload {
        let mut rng = crate::rng::SplitMix64::new(seed);
        let mut unit = || (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let mut edges = vec![0.0];
        edges.extend(
            (0..bins).map(|b| 16.0 * (131_072.0f64 / 16.0).powf(b as f64 / (bins - 1) as f64)),
        );
        let mut w = Workload {
            edges: edges.clone(),
            ..Default::default()
        };
        for b in 0..bins {
            let occupied = unit() < 0.8;
            let rate = if occupied {
                scale * unit() * 4.0 / (1.0 + b as f64 / 8.0)
            } else {
                0.0
            };
            w.arrival_rate.push(rate);
            w.prompt_tokens.push(if occupied {
                edges[b] + unit() * (edges[b + 1] - edges[b])
            } else {
                0.0
            });
            w.decode_rate.push(rate * 300.0 * unit());
            w.decode_context
                .push(edges[b] + unit() * (edges[b + 1] - edges[b]));
            w.growth_rate
                .push(if b > 0 { rate * unit() * 0.2 } else { 0.0 });
        }
        w
    }

    #[test]
    fn branch_and_bound_keeps_the_optimum() {
        let m = model();
        let mut pruned_paths = 0;
        for seed in 0..24 {
            for (bins, n, scale) in [(24, 6, 0.3), (32, 12, 1.0), (40, 16, 3.0), (48, 9, 0.05)] {
                let w = scattered(bins, seed, scale);
                for q in [QoeConfig::default(), priced_overload()] {
                    let p = Prepared::new(&m, &w, q);
                    let plain = p.solve(n, false, None).map(|c| p.layout_cost(&c));
                    let pruned = p.solve_pruned(n).map(|c| p.layout_cost(&c));
                    pruned_paths += usize::from(same_cost(
                        plain,
                        pruned,
                        &format!("seed {seed} bins {bins} {q:?}"),
                    ));
                }
            }
        }
        assert!(
            pruned_paths > 40,
            "only {pruned_paths} feasible cases exercised the bound"
        );
    }

    #[test]
    fn overload_still_returns_a_layout() {
        let p = partition(&model(), &bimodal(200.0), 2, QoeConfig::default()).unwrap();
        assert!(!p.feasible);
        assert!(p.excess_work > 0.0);
        assert_eq!(p.stages.iter().map(|s| s.instances).sum::<usize>(), 2);
    }

    #[test]
    fn a_priced_overload_is_finite_and_falls_with_instances() {
        let m = model();
        let (w, q) = (bimodal(200.0), priced_overload());
        let p = partition(&m, &w, 2, q).unwrap();
        assert!(!p.feasible && p.excess_work > 0.0, "{p:?}");
        assert!(
            p.total_cost.is_finite() && p.mean_e2e_s.is_finite(),
            "{p:?}"
        );
        let prepared = Prepared::new(&m, &w, q);
        let bins = w.bins();
        let costs: Vec<f64> = (1..=40)
            .map(|n| prepared.price(0, bins, n, (0, bins)).cost)
            .collect();
        assert!(costs.iter().all(|c| c.is_finite()), "{costs:?}");
        assert!(costs.windows(2).all(|c| c[1] <= c[0]), "{costs:?}");
        // A longer horizon prices the same backlog higher.
        let longer = QoeConfig {
            overload_horizon_s: 600.0,
            ..q
        };
        let c60 = prepared.price(0, bins, 1, (0, bins)).cost;
        let c600 = Prepared::new(&m, &w, longer)
            .price(0, bins, 1, (0, bins))
            .cost;
        assert!(c600 > c60, "{c600} vs {c60}");
    }

    #[test]
    fn the_overload_wait_continues_the_queue_wait() {
        let (u, residual) = (0.9, 4.0);
        for m in [1.0, 2.0, 8.0] {
            let below = queue_wait(u - 1e-7, m, residual);
            let above = overload_wait(u, u, m, residual, 60.0);
            assert!(
                (below - above).abs() <= 1e-4 * above,
                "m {m}: {below} vs {above}"
            );
            let step = 1e-6;
            let slope = (queue_wait(u, m, residual) - queue_wait(u - step, m, residual)) / step;
            let ext = (overload_wait(u + 0.01, u, m, residual, 60.0) - above) / 0.01;
            assert!(
                (slope - ext).abs() <= 1e-3 * slope,
                "m {m}: {slope} vs {ext}"
            );
        }
        // Past rho = 1 the backlog adds (rho - 1) * horizon / 2.
        let at1 = overload_wait(1.0, u, 1.0, residual, 60.0);
        let at12 = overload_wait(1.2, u, 1.0, residual, 60.0);
        let tangent =
            overload_wait(1.2, u, 1.0, residual, 0.0) - overload_wait(1.0, u, 1.0, residual, 0.0);
        assert!(((at12 - at1) - tangent - 0.2 * 30.0).abs() < 1e-9);
    }

    #[test]
    fn bad_input_names_the_field() {
        let m = model();
        let mut w = bimodal(1.0);
        w.edges[2] = 10.0;
        let e = partition(&m, &w, 4, QoeConfig::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("edges"), "{e}");
        let mut w = bimodal(1.0);
        w.arrival_rate[1] = -1.0;
        let e = partition(&m, &w, 4, QoeConfig::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("arrival_rate"), "{e}");
        let e = partition(&m, &bimodal(1.0), 0, QoeConfig::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("instances"), "{e}");
        let e = evaluate(
            &m,
            &bimodal(1.0),
            QoeConfig::default(),
            &[0, 1, 2, 4],
            &[1, 1],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("instances"), "{e}");
    }

    fn h200() -> CostModel {
        CostModel::from_json(include_str!(
            "../../python/l4_sglang/data/costmodels/llama3-8b-h200-flashinfer.json"
        ))
        .unwrap()
    }

    /// Least cost over every mixed layout: every cut set, every composition
    /// of the instances, every class per stage using each class exactly.
    fn brute_force_classes(classes: &[InstanceClass], w: &Workload, q: QoeConfig) -> (f64, f64) {
        let n: usize = classes.iter().map(|c| c.count).sum();
        let (mut best, mut least_excess) = (f64::INFINITY, f64::INFINITY);
        for cuts in cut_sets(w.bins()) {
            let k = cuts.len() - 1;
            if k > n {
                continue;
            }
            let labels = classes.len().pow(k as u32);
            for code in 0..labels {
                let stage_classes: Vec<usize> = (0..k)
                    .map(|s| (code / classes.len().pow(s as u32)) % classes.len())
                    .collect();
                // Counts: each class's instances split over its stages.
                let mut options: Vec<Vec<usize>> = vec![vec![]];
                for &c in &stage_classes {
                    let mut next = Vec::new();
                    for o in &options {
                        for m in 1..=classes[c].count {
                            let mut o = o.clone();
                            o.push(m);
                            next.push(o);
                        }
                    }
                    options = next;
                }
                for counts in options {
                    let ok = (0..classes.len()).all(|c| {
                        (0..k)
                            .filter(|&s| stage_classes[s] == c)
                            .map(|s| counts[s])
                            .sum::<usize>()
                            == classes[c].count
                    });
                    if !ok {
                        continue;
                    }
                    let p =
                        evaluate_classes(classes, w, q, &cuts, &counts, &stage_classes).unwrap();
                    best = best.min(p.total_cost);
                    least_excess = least_excess.min(p.excess_work);
                }
            }
        }
        (best, least_excess)
    }

    #[test]
    fn one_class_is_the_plain_partition() {
        let m = model();
        for seed in 0..6 {
            let w = scattered(24, seed, 1.0);
            let q = QoeConfig::default();
            let one = partition_classes(
                &[InstanceClass {
                    model: &m,
                    count: 9,
                }],
                &w,
                q,
            )
            .unwrap();
            assert_eq!(one, partition(&m, &w, 9, q).unwrap());
            assert!(one.stages.iter().all(|s| s.class == 0));
        }
    }

    #[test]
    fn mixed_dp_matches_brute_force() {
        let (a, b) = (model(), h200());
        let mut feasible = 0;
        for seed in 0..12 {
            for (bins, counts, scale) in [
                (4, [2, 2], 0.3),
                (4, [1, 3], 1.0),
                (5, [2, 1], 0.1),
                (3, [3, 2], 3.0),
            ] {
                let w = scattered(bins, seed, scale);
                let q = QoeConfig::default();
                let classes = [
                    InstanceClass {
                        model: &a,
                        count: counts[0],
                    },
                    InstanceClass {
                        model: &b,
                        count: counts[1],
                    },
                ];
                let p = partition_classes(&classes, &w, q).unwrap();
                for (c, &count) in counts.iter().enumerate() {
                    let used: usize = p
                        .stages
                        .iter()
                        .filter(|s| s.class == c)
                        .map(|s| s.instances)
                        .sum();
                    assert_eq!(used, count);
                }
                let (best, least_excess) = brute_force_classes(&classes, &w, q);
                if best.is_finite() {
                    feasible += 1;
                    assert!(
                        (p.total_cost - best).abs() <= 1e-9 * best.max(1.0),
                        "seed {seed} bins {bins}: {} vs {best}",
                        p.total_cost
                    );
                } else {
                    assert!(!p.feasible);
                    assert!(
                        (p.excess_work - least_excess).abs() <= 1e-9 * least_excess.max(1.0),
                        "seed {seed}: {} vs {least_excess}",
                        p.excess_work
                    );
                }
            }
        }
        assert!(feasible > 10, "{feasible}");
    }

    #[test]
    fn bad_classes_name_the_field() {
        let m = model();
        let w = bimodal(1.0);
        let q = QoeConfig::default();
        let class = InstanceClass {
            model: &m,
            count: 2,
        };
        let e = partition_classes(&[class; 4], &w, q)
            .unwrap_err()
            .to_string();
        assert!(e.contains("classes") && e.contains("at most 3"), "{e}");
        let e = partition_classes(&[], &w, q).unwrap_err().to_string();
        assert!(e.contains("classes"), "{e}");
        let zero = InstanceClass {
            model: &m,
            count: 0,
        };
        let e = partition_classes(&[class, zero], &w, q)
            .unwrap_err()
            .to_string();
        assert!(e.contains("classes[1].count"), "{e}");
        let e = evaluate_classes(&[class, class], &w, q, &[0, 2, 4], &[2, 2], &[0, 0])
            .unwrap_err()
            .to_string();
        assert!(e.contains("stage_classes"), "{e}");
        let e = evaluate_classes(&[class, class], &w, q, &[0, 2, 4], &[2, 2], &[0, 2])
            .unwrap_err()
            .to_string();
        assert!(e.contains("stage_classes"), "{e}");
    }

    #[test]
    fn mixed_branch_and_bound_keeps_the_optimum() {
        let (a, b) = (model(), h200());
        let c = a.without_heterogeneity();
        let mut pruned_paths = 0;
        for seed in 0..12 {
            for (bins, counts, scale) in [
                (24, vec![3, 3], 0.3),
                (32, vec![6, 6], 1.0),
                (40, vec![4, 8], 3.0),
                (28, vec![2, 3, 4], 1.0),
                (48, vec![5, 4], 0.05),
            ] {
                let w = scattered(bins, seed, scale);
                let models = [&a, &b, &c];
                let classes: Vec<InstanceClass> = counts
                    .iter()
                    .enumerate()
                    .map(|(k, &count)| InstanceClass {
                        model: models[k],
                        count,
                    })
                    .collect();
                let mixed = Mixed::new(&classes, &w, QoeConfig::default());
                let plain = mixed.solve(false, None).map(|s| mixed.layout_cost(&s));
                let pruned = mixed.solve_pruned().map(|s| mixed.layout_cost(&s));
                pruned_paths += usize::from(same_cost(
                    plain,
                    pruned,
                    &format!("seed {seed} bins {bins}"),
                ));
            }
        }
        assert!(pruned_paths > 20, "only {pruned_paths} feasible cases");
    }
}
