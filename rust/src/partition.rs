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
//! wait = rho / (1 - rho) * S / 2,  S = P / (lam + mig)   (M/D/1 queue)
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
//! # The DP
//! `f[i][k]` = least cost of bins `[0, i)` on exactly `k` instances:
//! `f[0][0] = 0`, `f[0][k>0] = inf`, `f[i][k] = min over j < i, 1 <= m <= k of
//! f[j][k-m] + cost(j, i, m)`, scanning j then m upwards and keeping the
//! first strict minimum. The answer is `f[B][N]`. If it is infinite (no
//! layout keeps every stage under `max_utilization`), a second DP with
//! `cost = max(0, W - m * max_utilization)` finds the layout with the least
//! excess work, reported with `feasible = false`.
//! Cost is O(B^2 N^2) in the worst case; stages below their minimum instance
//! count (`W / m >= max_utilization`) are skipped, which prunes most of it
//! under load.

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
}

impl Default for QoeConfig {
    fn default() -> Self {
        QoeConfig {
            slo_ttft_s: 2.0,
            slo_tpot_s: 0.1,
            slo_penalty_s: 100.0,
            max_utilization: 0.9,
        }
    }
}

/// One stage of a layout and why it costs what it costs.
#[derive(Debug, Clone, PartialEq)]
pub struct StageReport {
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
        Ok(())
    }
}

/// Everything about a stage `[j, i)` that does not depend on its instance count.
struct StageShape {
    lam: f64,
    mig: f64,
    prefill_arrivals: f64,
    prefill_work: f64,
    mig_prefill: f64,
    decode_rate: f64,
    work: f64,
    curve: Option<DecodeCurve>,
}

/// Prefix sums over bins, so a stage's totals cost O(1).
struct Prepared<'a> {
    w: &'a Workload,
    model: &'a CostModel,
    qoe: QoeConfig,
    /// prefill(prompt_tokens[b]), running max over b (equal to the value on occupied bins).
    prefill_mono: Vec<f64>,
    cum_lam: Vec<f64>,
    cum_lam_prefill: Vec<f64>,
    cum_decode: Vec<f64>,
    cum_decode_ctx: Vec<f64>,
    /// Highest bin < b with decode_rate > 0, plus one (0 if none).
    top_decode: Vec<usize>,
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
    excess: f64,
    utilization: f64,
    prefill_utilization: f64,
    wait: f64,
    tpot: f64,
    latency: f64,
    violations: f64,
    ttft_ok: f64,
}

impl<'a> Prepared<'a> {
    fn new(model: &'a CostModel, w: &'a Workload, qoe: QoeConfig) -> Self {
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
        let cum_lam_prefill = prefix((0..n).map(|b| w.arrival_rate[b] * prefill_mono[b]));
        let cum_decode = prefix(w.decode_rate.iter().copied());
        let cum_decode_ctx = prefix((0..n).map(|b| w.decode_rate[b] * w.decode_context[b]));
        let mut top_decode = vec![0usize; n + 1];
        for b in 0..n {
            top_decode[b + 1] = if w.decode_rate[b] > 0.0 {
                b + 1
            } else {
                top_decode[b]
            };
        }
        Prepared {
            w,
            model,
            qoe,
            prefill_mono,
            cum_lam,
            cum_lam_prefill,
            cum_decode,
            cum_decode_ctx,
            top_decode,
        }
    }

    fn shape(&self, j: usize, i: usize) -> StageShape {
        let w = self.w;
        let lam = self.cum_lam[i] - self.cum_lam[j];
        let mig = if j > 0 { w.growth_rate[j] } else { 0.0 };
        let mig_prefill = if mig > 0.0 {
            self.model.prefill_time(w.edges[j])
        } else {
            0.0
        };
        let prefill_arrivals = self.cum_lam_prefill[i] - self.cum_lam_prefill[j];
        let prefill_work = prefill_arrivals + mig * mig_prefill;
        let decode_rate = self.cum_decode[i] - self.cum_decode[j];
        let (mut work, mut curve) = (prefill_work, None);
        if decode_rate > 0.0 {
            let mean_kv = (self.cum_decode_ctx[i] - self.cum_decode_ctx[j]) / decode_rate;
            let top = self.top_decode[i];
            let max_kv = if top > j { w.edges[top] } else { mean_kv };
            let c = self.model.decode_curve(mean_kv, max_kv);
            work += decode_rate / c.max_throughput();
            curve = Some(c);
        }
        StageShape {
            lam,
            mig,
            prefill_arrivals,
            prefill_work,
            mig_prefill,
            decode_rate,
            work,
            curve,
        }
    }

    /// Arrival rate of bins in `[j, i)` whose TTFT exceeds the SLO at this wait.
    fn ttft_violations(&self, j: usize, i: usize, wait: f64) -> f64 {
        // prefill_mono is non-decreasing, so the violating bins are a suffix.
        let slo = self.qoe.slo_ttft_s;
        let (mut lo, mut hi) = (j, i);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if wait + self.prefill_mono[mid] > slo {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        self.cum_lam[i] - self.cum_lam[lo]
    }

    fn price(&self, s: &StageShape, j: usize, i: usize, m: usize) -> StageCost {
        let q = &self.qoe;
        let mf = m as f64;
        let utilization = s.work / mf;
        let prefill_utilization = s.prefill_work / mf;
        let mut out = StageCost {
            cost: 0.0,
            feasible: true,
            excess: 0.0,
            utilization,
            prefill_utilization,
            wait: 0.0,
            tpot: 0.0,
            latency: 0.0,
            violations: 0.0,
            ttft_ok: 0.0,
        };
        let entering = s.lam + s.mig;
        if entering <= 0.0 && s.decode_rate <= 0.0 {
            return out;
        }
        let infeasible = |mut out: StageCost| {
            out.feasible = false;
            out.cost = f64::INFINITY;
            out.excess = (s.work - mf * q.max_utilization).max(0.0);
            out
        };
        if utilization >= q.max_utilization {
            return infeasible(out);
        }
        let busy = 1.0 - prefill_utilization;
        if let Some(curve) = &s.curve {
            match curve.solve(s.decode_rate / mf / busy) {
                Some((_, step)) => out.tpot = step / busy,
                None => return infeasible(out),
            }
        }
        let service = if entering > 0.0 {
            s.prefill_work / entering
        } else {
            0.0
        };
        out.wait = utilization / (1.0 - utilization) * service / 2.0;
        out.latency = s.lam * out.wait
            + s.prefill_arrivals
            + s.mig * (out.wait + s.mig_prefill)
            + s.decode_rate * out.tpot;
        let late = self.ttft_violations(j, i, out.wait);
        out.ttft_ok = s.lam - late;
        out.violations = late;
        if s.decode_rate > 0.0 && out.tpot > q.slo_tpot_s {
            out.violations += entering;
        }
        out.cost = out.latency + q.slo_penalty_s * out.violations;
        out
    }

    fn report(&self, j: usize, i: usize, m: usize) -> StageReport {
        let s = self.shape(j, i);
        let c = self.price(&s, j, i, m);
        StageReport {
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
        let feasible = stages.iter().all(|s| s.feasible);
        let total_lam = self.cum_lam[self.w.bins()];
        let total_decode = self.cum_decode[self.w.bins()];
        let sum = |f: fn(&StageReport) -> f64| stages.iter().map(f).sum::<f64>();
        let latency = sum(|s| s.latency_rate);
        let tpot_ok = stages
            .iter()
            .filter(|s| s.feasible && s.tpot_s <= self.qoe.slo_tpot_s)
            .map(|s| s.decode_rate)
            .sum::<f64>();
        let excess = cuts
            .iter()
            .map(|&(j, i, m)| {
                let s = self.shape(j, i);
                (s.work - m as f64 * self.qoe.max_utilization).max(0.0)
            })
            .sum();
        let ratio = |num: f64, den: f64| if den > 0.0 { num / den } else { 1.0 };
        Partition {
            total_cost: if feasible {
                sum(|s| s.cost)
            } else {
                f64::INFINITY
            },
            mean_e2e_s: if feasible {
                ratio(latency, total_lam)
            } else {
                f64::INFINITY
            },
            ttft_attainment: if feasible {
                ratio(sum(|s| s.ttft_ok_rate), total_lam)
            } else {
                0.0
            },
            tpot_attainment: if feasible {
                ratio(tpot_ok, total_decode)
            } else {
                0.0
            },
            feasible,
            excess_work: excess,
            stages,
        }
    }

    /// The DP over bins and instances; `excess_mode` minimises overload instead of QoE.
    fn solve(&self, instances: usize, excess_mode: bool) -> Option<Vec<(usize, usize, usize)>> {
        let bins = self.w.bins();
        let n = instances;
        let width = n + 1;
        let mut f = vec![f64::INFINITY; (bins + 1) * width];
        let mut choice = vec![(0usize, 0usize); (bins + 1) * width];
        f[0] = 0.0;
        // Fewest instances any layout of bins [0, j) needs (0 for j = 0).
        let mut fewest = vec![usize::MAX; bins + 1];
        fewest[0] = 0;
        let mut stage_costs = vec![f64::INFINITY; width];
        let mut reversed = vec![f64::INFINITY; width];
        for i in 1..=bins {
            for j in 0..i {
                if fewest[j] == usize::MAX || fewest[j] >= n {
                    continue;
                }
                let shape = self.shape(j, i);
                // Smallest m with work / m < max_utilization (or 1 in excess mode).
                let m_lo = if excess_mode {
                    1
                } else {
                    let need = (shape.work / self.qoe.max_utilization).floor() as usize + 1;
                    need.max(1)
                };
                let m_hi = n - fewest[j];
                if m_lo > m_hi {
                    continue;
                }
                let mut cheapest_m = usize::MAX;
                for (m, slot) in stage_costs.iter_mut().enumerate().skip(1) {
                    *slot = if m < m_lo || m > m_hi {
                        f64::INFINITY
                    } else {
                        let c = self.price(&shape, j, i, m);
                        let v = if excess_mode { c.excess } else { c.cost };
                        if v.is_finite() && cheapest_m == usize::MAX {
                            cheapest_m = m;
                        }
                        v
                    };
                }
                if cheapest_m == usize::MAX {
                    continue;
                }
                fewest[i] = fewest[i].min(fewest[j] + cheapest_m);
                // reversed[t] = f[j][n - t]: f[j][k - m] sits at reversed[n - k + m],
                // so the scan over m reads both arrays forwards.
                let row = &f[j * width..(j + 1) * width];
                for t in 0..width {
                    reversed[t] = row[n - t];
                }
                for k in (fewest[j] + cheapest_m)..=n {
                    let base = n - k;
                    let ms = cheapest_m..=(k - fewest[j]).min(m_hi);
                    let best = ms
                        .clone()
                        .map(|m| reversed[base + m] + stage_costs[m])
                        .fold(f64::INFINITY, f64::min);
                    let slot = i * width + k;
                    if best < f[slot] {
                        let m = ms
                            .clone()
                            .find(|&m| reversed[base + m] + stage_costs[m] == best)
                            .unwrap_or(cheapest_m);
                        f[slot] = best;
                        choice[slot] = (j, m);
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
    let cuts = match prepared.solve(instances, false) {
        Some(cuts) => cuts,
        None => prepared
            .solve(instances, true)
            .expect("one stage on every instance is always a layout"),
    };
    Ok(prepared.summarize(&cuts))
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
    let bins = workload.bins();
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
    let stages: Vec<(usize, usize, usize)> = (0..instances.len())
        .map(|s| (cuts[s], cuts[s + 1], instances[s]))
        .collect();
    Ok(Prepared::new(model, workload, qoe).summarize(&stages))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> CostModel {
        CostModel::from_json(include_str!(
            "../../python/l4_sglang/data/costmodels/llama3-8b-h100-default.json"
        ))
        .unwrap()
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

    fn brute_force(model: &CostModel, w: &Workload, n: usize, q: QoeConfig) -> f64 {
        let bins = w.bins();
        let mut best = f64::INFINITY;
        for mask in 0u32..(1 << (bins - 1)) {
            let mut cuts = vec![0];
            cuts.extend((1..bins).filter(|b| mask & (1 << (b - 1)) != 0));
            cuts.push(bins);
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

    #[test]
    fn dp_matches_brute_force() {
        let m = model();
        for scale in [0.2, 1.0, 3.0] {
            for n in 1..=5 {
                let w = bimodal(scale);
                let q = QoeConfig::default();
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

    #[test]
    fn overload_still_returns_a_layout() {
        let p = partition(&model(), &bimodal(200.0), 2, QoeConfig::default()).unwrap();
        assert!(!p.feasible);
        assert!(p.excess_work > 0.0);
        assert_eq!(p.stages.iter().map(|s| s.instances).sum::<usize>(), 2);
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
}
