//! Balancing math over load snapshots: which instance takes a new request,
//! where the boundary between two neighbour stages should drift, and which
//! running request (if any) should move between two instances of a stage.
//!
//! Predicted work of an instance, in seconds:
//! `queued prefill time + decode step time of its batch * horizon_steps`,
//! where the horizon is how many more steps the batch is expected to run.
//!
//! Work is in seconds, so a mixed pool (say H100 and H200) prices each
//! instance with its own cost model: the `*_models` variants take one model
//! per instance and [`move_value_between`] one per side; the plain functions
//! are the same with one model for all.

use crate::cost_model::{CostModel, DecodeSummary};
use crate::error::CoreError;
use crate::rng::SplitMix64;

/// What a router knows about one instance at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct InstanceLoad {
    /// Requests decoding now.
    pub running: f64,
    /// Sum of their contexts (KV tokens).
    pub kv_tokens: f64,
    /// The longest context among them.
    pub max_kv: f64,
    /// Requests waiting for prefill and their prompt tokens.
    pub queued_requests: f64,
    pub queued_tokens: f64,
    /// Mean tokens the running requests still have to generate.
    pub mean_remaining: f64,
}

impl InstanceLoad {
    pub fn validate(&self, index: usize) -> Result<(), CoreError> {
        let fields = [
            ("running", self.running),
            ("kv_tokens", self.kv_tokens),
            ("max_kv", self.max_kv),
            ("queued_requests", self.queued_requests),
            ("queued_tokens", self.queued_tokens),
            ("mean_remaining", self.mean_remaining),
        ];
        for (name, v) in fields {
            if !(v.is_finite() && v >= 0.0) {
                return Err(CoreError::invalid(
                    format!("loads[{index}].{name}"),
                    format!("must be finite and >= 0, got {v}"),
                ));
            }
        }
        Ok(())
    }

    fn decode(&self) -> DecodeSummary {
        DecodeSummary {
            requests: self.running,
            kv_tokens: self.kv_tokens,
            max_kv: self.max_kv,
        }
    }
}

/// Predicted work (seconds) of an instance.
pub fn predicted_work(model: &CostModel, load: &InstanceLoad, horizon_steps: f64) -> f64 {
    let queued = if load.queued_requests > 0.0 {
        load.queued_requests * model.prefill_time(load.queued_tokens / load.queued_requests)
    } else {
        0.0
    };
    let decode = if load.running > 0.0 {
        model.decode_step_time(&load.decode()) * horizon_steps
    } else {
        0.0
    };
    queued + decode
}

fn validate_loads(loads: &[InstanceLoad]) -> Result<(), CoreError> {
    if loads.is_empty() {
        return Err(CoreError::invalid("loads", "needs at least one instance"));
    }
    loads
        .iter()
        .enumerate()
        .try_for_each(|(i, l)| l.validate(i))
}

/// Sample `candidates` distinct instances (all when it is >= their count) with
/// a generator seeded by `seed`, return the one with the least predicted work;
/// ties go to the lowest index. Sampling lets router replicas decide without
/// shared state and without herding onto the same instance.
pub fn pick_instance(
    model: &CostModel,
    loads: &[InstanceLoad],
    candidates: usize,
    horizon_steps: f64,
    seed: u64,
) -> Result<usize, CoreError> {
    pick_with(|_| model, loads, candidates, horizon_steps, seed)
}

/// [`pick_instance`] over a mixed pool: instance `i`'s predicted work is
/// priced with `models[i]`, so a faster instance holding the same batch
/// counts as less loaded.
pub fn pick_instance_models(
    models: &[&CostModel],
    loads: &[InstanceLoad],
    candidates: usize,
    horizon_steps: f64,
    seed: u64,
) -> Result<usize, CoreError> {
    check_models(models, loads.len())?;
    pick_with(|i| models[i], loads, candidates, horizon_steps, seed)
}

fn check_models(models: &[&CostModel], instances: usize) -> Result<(), CoreError> {
    if models.len() != instances {
        return Err(CoreError::invalid(
            "models",
            format!("has {} cost models for {instances} instances", models.len()),
        ));
    }
    Ok(())
}

fn pick_with<'m>(
    model_of: impl Fn(usize) -> &'m CostModel,
    loads: &[InstanceLoad],
    candidates: usize,
    horizon_steps: f64,
    seed: u64,
) -> Result<usize, CoreError> {
    validate_loads(loads)?;
    if candidates == 0 {
        return Err(CoreError::invalid("candidates", "must be >= 1"));
    }
    if !(horizon_steps.is_finite() && horizon_steps >= 0.0) {
        return Err(CoreError::invalid(
            "horizon_steps",
            format!("must be finite and >= 0, got {horizon_steps}"),
        ));
    }
    let mut order: Vec<usize> = (0..loads.len()).collect();
    let take = candidates.min(loads.len());
    if take < loads.len() {
        let mut rng = SplitMix64::new(seed);
        for s in 0..take {
            let pick = s + rng.below(loads.len() - s);
            order.swap(s, pick);
        }
    }
    let sampled = &mut order[..take];
    sampled.sort_unstable();
    let mut best = (f64::INFINITY, usize::MAX);
    for &i in sampled.iter() {
        let w = predicted_work(model_of(i), &loads[i], horizon_steps);
        if w < best.0 {
            best = (w, i);
        }
    }
    Ok(best.1)
}

/// Request-seconds a new request of `prompt` tokens adds at an instance: its
/// wait behind the queue, its prefill (which every running request waits out
/// too), and over `horizon_steps` decode steps its own step plus the slowdown
/// it brings to the batch it joins (the length-mix term included).
pub fn marginal_cost(
    model: &CostModel,
    load: &InstanceLoad,
    prompt: f64,
    horizon_steps: f64,
) -> f64 {
    let wait = if load.queued_requests > 0.0 {
        load.queued_requests * model.prefill_time(load.queued_tokens / load.queued_requests)
    } else {
        0.0
    };
    let n = load.running;
    let before = if n > 0.0 {
        model.decode_step_time(&load.decode())
    } else {
        0.0
    };
    let after = model.decode_step_time(&DecodeSummary {
        requests: n + 1.0,
        kv_tokens: load.kv_tokens + prompt,
        max_kv: load.max_kv.max(prompt),
    });
    wait + (n + 1.0) * model.prefill_time(prompt) + horizon_steps * (after + n * (after - before))
}

/// Index of the instance where a request of `prompt` tokens adds the least
/// request-seconds ([`marginal_cost`], instance `i` priced with `models[i]`);
/// ties go to the lowest index. Unlike [`pick_instance`] it weighs what the
/// request does to the batch it joins, not only how busy the instance is.
pub fn pick_marginal(
    models: &[&CostModel],
    loads: &[InstanceLoad],
    prompt: f64,
    horizon_steps: f64,
) -> Result<usize, CoreError> {
    validate_loads(loads)?;
    check_models(models, loads.len())?;
    for (name, v) in [("prompt", prompt), ("horizon_steps", horizon_steps)] {
        if !(v.is_finite() && v >= 0.0) {
            return Err(CoreError::invalid(
                name,
                format!("must be finite and >= 0, got {v}"),
            ));
        }
    }
    let mut best = (f64::INFINITY, 0);
    for (i, load) in loads.iter().enumerate() {
        let c = marginal_cost(models[i], load, prompt, horizon_steps);
        if c < best.0 {
            best = (c, i);
        }
    }
    Ok(best.1)
}

/// Settings of the boundary diffusion between two neighbour stages.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DiffusionConfig {
    /// Log-space step per unit of relative imbalance.
    pub rate: f64,
    /// Relative imbalance below which the boundary stays put.
    pub deadband: f64,
}

impl Default for DiffusionConfig {
    fn default() -> Self {
        DiffusionConfig {
            rate: 0.25,
            deadband: 0.1,
        }
    }
}

/// New boundary between a lower and an upper stage from their per-instance
/// loads (any common unit, e.g. utilization). The boundary moves in log
/// space, away from the busier side: a busier lower stage gives its top
/// lengths to the upper one. It stays strictly inside `(min_tokens, max_tokens)`,
/// the neighbouring boundaries.
pub fn diffuse_boundary(
    boundary: f64,
    lower_load: f64,
    upper_load: f64,
    min_tokens: f64,
    max_tokens: f64,
    cfg: DiffusionConfig,
) -> Result<f64, CoreError> {
    for (name, v) in [
        ("lower_load", lower_load),
        ("upper_load", upper_load),
        ("min_tokens", min_tokens),
    ] {
        if !(v.is_finite() && v >= 0.0) {
            return Err(CoreError::invalid(
                name,
                format!("must be finite and >= 0, got {v}"),
            ));
        }
    }
    if !(max_tokens.is_finite() && max_tokens > min_tokens) {
        return Err(CoreError::invalid(
            "max_tokens",
            format!("must be finite and > min_tokens, got {max_tokens}"),
        ));
    }
    if !(boundary > min_tokens && boundary < max_tokens) {
        return Err(CoreError::invalid(
            "boundary",
            format!("{boundary} is not inside ({min_tokens}, {max_tokens})"),
        ));
    }
    if !(cfg.rate.is_finite() && cfg.rate >= 0.0) {
        return Err(CoreError::invalid(
            "rate",
            format!("must be finite and >= 0, got {}", cfg.rate),
        ));
    }
    if !(cfg.deadband >= 0.0 && cfg.deadband < 1.0) {
        return Err(CoreError::invalid(
            "deadband",
            format!("must be in [0, 1), got {}", cfg.deadband),
        ));
    }
    let total = lower_load + upper_load;
    if total <= 0.0 {
        return Ok(boundary);
    }
    let imbalance = (lower_load - upper_load) / total;
    if imbalance.abs() <= cfg.deadband {
        return Ok(boundary);
    }
    let moved = boundary * (-cfg.rate * imbalance).exp();
    // Stay a token inside the neighbours so stages never collapse.
    let (lo, hi) = (min_tokens + 1.0, max_tokens - 1.0);
    Ok(if lo < hi {
        moved.clamp(lo, hi)
    } else {
        (min_tokens + max_tokens) / 2.0
    })
}

/// A running request as the balancer sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunningRequest {
    pub id: u64,
    pub context: f64,
    pub remaining: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MigrationConfig {
    /// Smallest relative work gap (source - target) / source worth a look.
    pub min_gap: f64,
    /// The gain must exceed `margin` times the recompute cost.
    pub margin: f64,
    pub horizon_steps: f64,
}

impl Default for MigrationConfig {
    fn default() -> Self {
        MigrationConfig {
            min_gap: 0.2,
            margin: 1.0,
            horizon_steps: 100.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Migration {
    pub request: u64,
    pub source: usize,
    pub target: usize,
    /// Predicted seconds of latency saved, summed over affected requests.
    pub gain_s: f64,
    /// Predicted seconds lost to the recompute prefill.
    pub cost_s: f64,
}

/// Gain and cost of moving `req` from a source batch to a target batch.
///
/// gain = remaining * (step_src - step_dst_after)                  the request itself
///      + (n_src - 1) * h_src * (step_src - step_src_after)        the source's others
///      - n_dst * h_dst * (step_dst_after - step_dst)              the target's others
/// with h = min(remaining, that instance's mean remaining), and
/// cost = prefill(context) * (1 + n_dst): the request waits for its recompute,
/// and the target's requests stall while it runs.
pub fn move_value(
    model: &CostModel,
    req: &RunningRequest,
    source: &InstanceLoad,
    source_after: &InstanceLoad,
    target: &InstanceLoad,
) -> (f64, f64) {
    move_value_between(model, model, req, source, source_after, target)
}

/// [`move_value`] between instances of different cost models: the source's
/// steps are priced with `source_model`, the target's steps and the
/// recompute prefill with `target_model`.
pub fn move_value_between(
    source_model: &CostModel,
    target_model: &CostModel,
    req: &RunningRequest,
    source: &InstanceLoad,
    source_after: &InstanceLoad,
    target: &InstanceLoad,
) -> (f64, f64) {
    let mut target_after = *target;
    target_after.running += 1.0;
    target_after.kv_tokens += req.context;
    target_after.max_kv = target.max_kv.max(req.context);
    let step = |model: &CostModel, l: &InstanceLoad| {
        if l.running > 0.0 {
            model.decode_step_time(&l.decode())
        } else {
            0.0
        }
    };
    let (s0, s1, d0, d1) = (
        step(source_model, source),
        step(source_model, source_after),
        step(target_model, target),
        step(target_model, &target_after),
    );
    let h_src = req.remaining.min(source.mean_remaining);
    let h_dst = req.remaining.min(target.mean_remaining);
    let gain = req.remaining * (s0 - d1) + source_after.running * h_src * (s0 - s1)
        - target.running * h_dst * (d1 - d0);
    let cost = target_model.prefill_time(req.context) * (1.0 + target.running);
    (gain, cost)
}

/// Pair the most and the least loaded instances of a stage; if their gap is
/// worth it, return the request of the busiest one whose move gains the most
/// beyond `margin` times its recompute cost. `requests[i]` lists instance i's
/// running requests; `loads[i]` must describe the same batch.
pub fn pick_migration(
    model: &CostModel,
    loads: &[InstanceLoad],
    requests: &[Vec<RunningRequest>],
    cfg: MigrationConfig,
) -> Result<Option<Migration>, CoreError> {
    migration_with(|_| model, loads, requests, cfg)
}

/// [`pick_migration`] over a mixed pool: instance `i` is priced with `models[i]`.
pub fn pick_migration_models(
    models: &[&CostModel],
    loads: &[InstanceLoad],
    requests: &[Vec<RunningRequest>],
    cfg: MigrationConfig,
) -> Result<Option<Migration>, CoreError> {
    check_models(models, loads.len())?;
    migration_with(|i| models[i], loads, requests, cfg)
}

fn migration_with<'m>(
    model_of: impl Fn(usize) -> &'m CostModel,
    loads: &[InstanceLoad],
    requests: &[Vec<RunningRequest>],
    cfg: MigrationConfig,
) -> Result<Option<Migration>, CoreError> {
    validate_loads(loads)?;
    if requests.len() != loads.len() {
        return Err(CoreError::invalid(
            "requests",
            format!("has {} lists for {} instances", requests.len(), loads.len()),
        ));
    }
    for (name, v) in [
        ("min_gap", cfg.min_gap),
        ("margin", cfg.margin),
        ("horizon_steps", cfg.horizon_steps),
    ] {
        if !(v.is_finite() && v >= 0.0) {
            return Err(CoreError::invalid(
                name,
                format!("must be finite and >= 0, got {v}"),
            ));
        }
    }
    for (i, list) in requests.iter().enumerate() {
        if let Some(r) = list.iter().find(|r| {
            !(r.context.is_finite()
                && r.context >= 0.0
                && r.remaining.is_finite()
                && r.remaining >= 0.0)
        }) {
            return Err(CoreError::invalid(
                format!("requests[{i}]"),
                format!(
                    "request {} has context {} and remaining {}: both must be finite and >= 0",
                    r.id, r.context, r.remaining
                ),
            ));
        }
    }
    if loads.len() < 2 {
        return Ok(None);
    }
    let work: Vec<f64> = loads
        .iter()
        .enumerate()
        .map(|(i, l)| predicted_work(model_of(i), l, cfg.horizon_steps))
        .collect();
    let source = (0..work.len()).fold(0, |a, i| if work[i] > work[a] { i } else { a });
    let target = (0..work.len()).fold(0, |a, i| if work[i] < work[a] { i } else { a });
    if source == target
        || work[source] <= 0.0
        || (work[source] - work[target]) / work[source] < cfg.min_gap
    {
        return Ok(None);
    }
    let src = &loads[source];
    let list = &requests[source];
    let mut best: Option<Migration> = None;
    for (idx, req) in list.iter().enumerate() {
        let mut after = *src;
        after.running = (src.running - 1.0).max(0.0);
        after.kv_tokens = (src.kv_tokens - req.context).max(0.0);
        after.max_kv = list
            .iter()
            .enumerate()
            .filter(|(k, _)| *k != idx)
            .map(|(_, r)| r.context)
            .fold(0.0, f64::max);
        let (gain, cost) = move_value_between(
            model_of(source),
            model_of(target),
            req,
            src,
            &after,
            &loads[target],
        );
        let net = gain - cfg.margin * cost;
        if net > 0.0 && best.is_none_or(|b| net > b.gain_s - cfg.margin * b.cost_s) {
            best = Some(Migration {
                request: req.id,
                source,
                target,
                gain_s: gain,
                cost_s: cost,
            });
        }
    }
    Ok(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::cost_model::tests::h100 as model;

    fn load(running: f64, ctx: f64) -> InstanceLoad {
        InstanceLoad {
            running,
            kv_tokens: running * ctx,
            max_kv: ctx,
            mean_remaining: 200.0,
            ..Default::default()
        }
    }

    #[test]
    fn pick_prefers_the_idle_instance_when_sampling_all() {
        let loads = [load(50.0, 4_000.0), load(2.0, 1_000.0), load(30.0, 4_000.0)];
        assert_eq!(pick_instance(&model(), &loads, 3, 100.0, 7).unwrap(), 1);
    }

    #[test]
    fn pick_is_seeded_and_spreads() {
        let loads = vec![load(1.0, 1_000.0); 8];
        let m = model();
        let a: Vec<usize> = (0..64)
            .map(|s| pick_instance(&m, &loads, 2, 100.0, s).unwrap())
            .collect();
        let b: Vec<usize> = (0..64)
            .map(|s| pick_instance(&m, &loads, 2, 100.0, s).unwrap())
            .collect();
        assert_eq!(a, b);
        let distinct: std::collections::BTreeSet<_> = a.iter().collect();
        assert!(distinct.len() >= 5, "{distinct:?}");
    }

    #[test]
    fn marginal_pick_keeps_a_long_prompt_off_a_batch_of_short_ones() {
        // Same tokens in flight: 40 short requests, or 2 long ones. A 60K prompt slows the
        // short batch for 40 requests (the length-mix term); a 200-token one barely matters.
        let m = model();
        let short = load(40.0, 1_000.0);
        let long = load(2.0, 20_000.0);
        assert_eq!(
            pick_marginal(&[&m, &m], &[short, long], 60_000.0, 100.0).unwrap(),
            1
        );
        let idle = InstanceLoad::default();
        assert_eq!(
            pick_marginal(&[&m, &m], &[short, idle], 200.0, 100.0).unwrap(),
            1
        );
        let queued = InstanceLoad {
            queued_requests: 3.0,
            queued_tokens: 30_000.0,
            ..Default::default()
        };
        let c = marginal_cost(&m, &queued, 100.0, 0.0);
        let expected = 3.0 * m.prefill_time(10_000.0) + m.prefill_time(100.0) + 0.0;
        assert!((c - expected).abs() < 1e-12, "{c} vs {expected}");
        assert!(pick_marginal(&[&m], &[short], f64::NAN, 100.0).is_err());
        assert!(pick_marginal(&[&m], &[short, long], 1.0, 100.0).is_err());
    }

    #[test]
    fn diffusion_moves_away_from_the_busy_side() {
        let cfg = DiffusionConfig::default();
        let down = diffuse_boundary(8_192.0, 0.9, 0.3, 1_024.0, 65_536.0, cfg).unwrap();
        let up = diffuse_boundary(8_192.0, 0.3, 0.9, 1_024.0, 65_536.0, cfg).unwrap();
        let still = diffuse_boundary(8_192.0, 0.5, 0.52, 1_024.0, 65_536.0, cfg).unwrap();
        assert!(down < 8_192.0 && up > 8_192.0 && still == 8_192.0);
        let clamped = diffuse_boundary(
            1_100.0,
            1.0,
            0.0,
            1_024.0,
            65_536.0,
            DiffusionConfig {
                rate: 5.0,
                deadband: 0.0,
            },
        )
        .unwrap();
        assert!(clamped > 1_024.0);
        assert!(diffuse_boundary(100.0, 1.0, 0.0, 1_024.0, 65_536.0, cfg).is_err());
    }

    #[test]
    fn migration_only_when_the_gap_pays() {
        let m = model();
        let busy = InstanceLoad {
            running: 3.0,
            kv_tokens: 3_000.0 + 100_000.0,
            max_kv: 100_000.0,
            mean_remaining: 500.0,
            ..Default::default()
        };
        let idle = InstanceLoad {
            mean_remaining: 500.0,
            ..Default::default()
        };
        let reqs = vec![
            vec![
                RunningRequest {
                    id: 1,
                    context: 1_000.0,
                    remaining: 5.0,
                },
                RunningRequest {
                    id: 2,
                    context: 2_000.0,
                    remaining: 800.0,
                },
                RunningRequest {
                    id: 3,
                    context: 100_000.0,
                    remaining: 800.0,
                },
            ],
            vec![],
        ];
        let mv = pick_migration(&m, &[busy, idle], &reqs, MigrationConfig::default())
            .unwrap()
            .expect("worth moving");
        assert_eq!((mv.source, mv.target), (0, 1));
        assert!(mv.gain_s > mv.cost_s);
        // Balanced instances: nothing moves.
        let none = pick_migration(
            &m,
            &[busy, busy],
            &[reqs[0].clone(), reqs[0].clone()],
            MigrationConfig::default(),
        )
        .unwrap();
        assert!(none.is_none());
        // A huge margin makes every move too expensive.
        let cfg = MigrationConfig {
            margin: 1e9,
            ..Default::default()
        };
        assert!(pick_migration(&m, &[busy, idle], &reqs, cfg)
            .unwrap()
            .is_none());
    }

    #[test]
    fn pick_prices_each_instance_with_its_own_model() {
        let slow = model();
        let mut p = slow.params.clone();
        p.decode_kv_s /= 4.0;
        p.linear_floor_s /= 4.0;
        p.overhead_s /= 4.0;
        let fast = CostModel::new(p).unwrap();
        // The same batch on both: one model says tie (lowest index), the
        // per-instance models pick the faster instance.
        let loads = [load(40.0, 4_000.0), load(40.0, 4_000.0)];
        assert_eq!(pick_instance(&slow, &loads, 2, 100.0, 0).unwrap(), 0);
        assert_eq!(
            pick_instance_models(&[&slow, &fast], &loads, 2, 100.0, 0).unwrap(),
            1
        );
        // A somewhat busier fast instance still beats the slow one.
        let loads = [load(40.0, 4_000.0), load(60.0, 4_000.0)];
        assert_eq!(
            pick_instance_models(&[&slow, &fast], &loads, 2, 100.0, 0).unwrap(),
            1
        );
        let e = pick_instance_models(&[&slow], &loads, 2, 100.0, 0).unwrap_err();
        assert!(e.to_string().contains("models"), "{e}");
        // One model for every instance is the plain pick.
        for seed in 0..32 {
            let loads = [load(3.0, 100.0), load(9.0, 900.0), load(1.0, 60_000.0)];
            assert_eq!(
                pick_instance_models(&[&slow; 3], &loads, 2, 100.0, seed).unwrap(),
                pick_instance(&slow, &loads, 2, 100.0, seed).unwrap()
            );
        }
    }
}
