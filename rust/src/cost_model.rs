//! Step-time cost model of one engine iteration.
//!
//! A step runs a batch of items; each item is one request with `new_tokens`
//! computed in this step (1 for a decode, the chunk size for a prefill chunk)
//! and `context` tokens already in its KV cache before the step.
//!
//! ```text
//! step = overhead
//!      + max(floor, per_token * n)                           linear layers (roofline)
//!      + heavy_per_token * max(0, n - heavy_from)            long steps' extra per token
//!      + per_request * n_items                               sampling, bookkeeping
//!      + decode_attention(decode items)                      new_tokens == 1
//!      + sum over prefill items of
//!          prefill_pair * new * (new + 1) / 2                 causal, within the chunk
//!        + prefill_context_pair * new * context              over the cached prefix
//!
//! n = sum(new_tokens); floor = extend_floor for a step with a prefill item, else linear_floor
//! decode_attention = decode_kv * (S + het_alpha * max(0, het_width * L * split - S))
//!   S = sum of KV tokens read (context + 1 per item), L = the longest of them,
//!   split = min(1, decode items / split_kv_requests) (1 when absent).
//! ```
//!
//! The heavy term: on every real SGLang calibration (H100, H200; FlashInfer
//! and Triton) a step of 8K tokens (8 prompts of 1K) costs ~23 us per token,
//! while a few hundred tokens cost much less each; lone prompts alone cannot
//! tell the two apart, batched prompts do. `heavy * heavy_from <= overhead`
//! (checked) keeps tokens per second from falling as a step grows. The
//! context term: Triton's extend kernel pays about twice per cached-prefix
//! pair what it pays per causal pair (FlashInfer about the same); absent, it
//! equals `prefill_pair`.
//!
//! The extend floor: on SGLang with Triton attention a lone prompt of 16 to
//! 512 tokens reaches its first token in the same time (H200: 20.6-21.0 ms
//! medians of 40 repeats), while 2K tokens take 58 ms: an extend step runs
//! without CUDA graphs, so below a few hundred tokens it is bound by launching
//! its kernels, not by the GPU, a floor several times a graphed decode step's.
//! Absent, it equals `linear_floor`.
//!
//! The decode term is a wave model of the attention kernel: the GPU works on
//! about `het_width` requests' worth of KV at once, so a batch costs its total
//! KV (S) unless one request is so long that its own KV, spread over the whole
//! machine's width, takes longer (`het_width * L > S`). That is why one 128K
//! request beside 63 short ones runs 8x slower than 64 requests of 4K holding
//! the same KV. `het_alpha` = 0 switches the length-mix term off (a model that
//! sees only the sum), which comparisons report beside the calibrated one.
//!
//! The split: a batch of few requests leaves most SMs idle, and split-KV
//! kernels (FlashInfer's decode planner, FA2's split path) then cut each
//! request's KV into pieces spread over them, so a long request is no longer
//! one straggling unit: below `split_kv_requests` decode requests (about the
//! SM count over the KV heads) its KV counts as `n / split_kv_requests` of
//! itself. A lone long decode thus costs about its KV read, not
//! `het_width` times it, while one long request beside 63 short ones keeps
//! the full penalty. The step stays continuous and non-decreasing in n.

use serde::{Deserialize, Serialize};

use crate::error::CoreError;

/// Calibrated parameters of one (model, GPU, attention backend) triple.
/// All times are seconds for the whole model (every layer), not per layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CostModelParams {
    pub name: String,
    /// Fixed cost of every step: scheduling, kernel launches.
    pub overhead_s: f64,
    /// Linear layers cannot run faster than reading the weights once.
    pub linear_floor_s: f64,
    /// The floor of a step that holds a prefill (extend) item; absent: `linear_floor_s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extend_floor_s: Option<f64>,
    /// Linear-layer time per token computed in the step (compute bound).
    pub linear_per_token_s: f64,
    /// Extra time per token beyond `linear_heavy_from_tokens` in one step.
    #[serde(default)]
    pub linear_heavy_per_token_s: f64,
    /// Step size (tokens) past which `linear_heavy_per_token_s` applies.
    #[serde(default)]
    pub linear_heavy_from_tokens: f64,
    /// Per request in the batch: sampling, logits, metadata.
    pub per_request_s: f64,
    /// Decode attention per KV token read.
    pub decode_kv_s: f64,
    /// How many requests' worth of KV the attention kernel processes at once.
    pub het_width: f64,
    /// Weight of the length-mix (heterogeneity) term in [0, 1], 0 switches it off.
    pub het_alpha: f64,
    /// Below this many decode requests the attention kernel splits long KV over idle SMs
    /// (the length-mix term scales by n / this); absent: it never does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_kv_requests: Option<f64>,
    /// Prefill attention per (query token, key token) pair within the chunk (causal part).
    pub prefill_pair_s: f64,
    /// Prefill attention per (query token, cached context token) pair; absent: `prefill_pair_s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefill_context_pair_s: Option<f64>,
    /// KV cache capacity of one instance in tokens.
    pub kv_capacity_tokens: f64,
    /// Most requests one instance runs at once.
    pub max_running_requests: f64,
    /// Prefill chunk size in tokens (SGLang's --chunked-prefill-size).
    pub chunked_prefill_size: f64,
    /// Latency every request pays before its first step (HTTP, tokenization,
    /// scheduling): host time, not GPU time, so no step holds it. The emulated
    /// worker waits it out before queueing a request. The DP leaves it out:
    /// every layout pays it alike.
    #[serde(default)]
    pub request_overhead_s: f64,
    /// Where the numbers come from (GPU, engine, kernel, date, method).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub provenance: serde_json::Value,
    /// Raw calibration points, kept beside the fit they produced.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub measurements: serde_json::Value,
}

/// One item of a batch: tokens computed this step, tokens already cached.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchItem {
    pub new_tokens: u64,
    pub context: u64,
}

/// Summary of the decode part of a batch, enough to price a step without
/// listing its requests (the DP and the balancer work on such summaries).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct DecodeSummary {
    pub requests: f64,
    /// Sum over requests of KV tokens read in the step.
    pub kv_tokens: f64,
    /// Longest KV read by one request.
    pub max_kv: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CostModel {
    pub params: CostModelParams,
}

fn check_non_negative(field: &'static str, value: f64) -> Result<(), CoreError> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(CoreError::invalid(
            field,
            format!("must be a finite number >= 0, got {value}"),
        ))
    }
}

fn check_positive(field: &'static str, value: f64) -> Result<(), CoreError> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(CoreError::invalid(
            field,
            format!("must be a finite number > 0, got {value}"),
        ))
    }
}

impl CostModel {
    pub fn new(params: CostModelParams) -> Result<Self, CoreError> {
        let p = &params;
        check_non_negative("overhead_s", p.overhead_s)?;
        check_non_negative("linear_floor_s", p.linear_floor_s)?;
        if let Some(f) = p.extend_floor_s {
            check_non_negative("extend_floor_s", f)?;
        }
        check_non_negative("linear_per_token_s", p.linear_per_token_s)?;
        check_non_negative("per_request_s", p.per_request_s)?;
        check_non_negative("decode_kv_s", p.decode_kv_s)?;
        check_positive("het_width", p.het_width)?;
        if let Some(s) = p.split_kv_requests {
            check_positive("split_kv_requests", s)?;
        }
        // Above 1 the step time would fall as a batch grows, which no kernel does
        // (and the DP's pruning relies on more instances never costing more).
        if !(p.het_alpha.is_finite() && (0.0..=1.0).contains(&p.het_alpha)) {
            return Err(CoreError::invalid(
                "het_alpha",
                format!("must be in [0, 1], got {}", p.het_alpha),
            ));
        }
        check_non_negative("prefill_pair_s", p.prefill_pair_s)?;
        if let Some(c) = p.prefill_context_pair_s {
            check_non_negative("prefill_context_pair_s", c)?;
        }
        check_non_negative("linear_heavy_per_token_s", p.linear_heavy_per_token_s)?;
        check_non_negative("linear_heavy_from_tokens", p.linear_heavy_from_tokens)?;
        // Past the mark a step costs overhead - heavy * from + (slopes) * n: a negative
        // intercept would make tokens per second fall as the step grows, which no GPU does.
        if p.linear_heavy_per_token_s * p.linear_heavy_from_tokens > p.overhead_s * (1.0 + 1e-9) {
            return Err(CoreError::invalid(
                "linear_heavy_per_token_s",
                format!(
                    "linear_heavy_per_token_s * linear_heavy_from_tokens ({}) must not exceed \
                     overhead_s ({}): throughput would fall as a step grows",
                    p.linear_heavy_per_token_s * p.linear_heavy_from_tokens,
                    p.overhead_s
                ),
            ));
        }
        check_positive("kv_capacity_tokens", p.kv_capacity_tokens)?;
        check_positive("max_running_requests", p.max_running_requests)?;
        check_positive("chunked_prefill_size", p.chunked_prefill_size)?;
        check_non_negative("request_overhead_s", p.request_overhead_s)?;
        if p.overhead_s + p.linear_floor_s <= 0.0 {
            return Err(CoreError::invalid(
                "overhead_s",
                "overhead_s + linear_floor_s must be > 0: a step cannot be free".to_string(),
            ));
        }
        Ok(Self { params })
    }

    pub fn from_json(text: &str) -> Result<Self, CoreError> {
        let params: CostModelParams = serde_json::from_str(text)
            .map_err(|e| CoreError::invalid("cost_model", e.to_string()))?;
        Self::new(params)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&self.params).expect("plain struct serializes")
    }

    /// The same model with the length-mix term switched off.
    pub fn without_heterogeneity(&self) -> Self {
        let mut params = self.params.clone();
        params.het_alpha = 0.0;
        params.name = format!("{}-no-het", params.name);
        Self { params }
    }

    fn extend_floor_s(&self) -> f64 {
        self.params
            .extend_floor_s
            .unwrap_or(self.params.linear_floor_s)
    }

    /// `floor`: the decode floor, or the extend floor for a step with a prefill item.
    fn linear_time(&self, tokens: f64, requests: f64, floor: f64) -> f64 {
        let p = &self.params;
        if requests <= 0.0 {
            return 0.0;
        }
        p.overhead_s
            + floor.max(p.linear_per_token_s * tokens)
            + p.linear_heavy_per_token_s * (tokens - p.linear_heavy_from_tokens).max(0.0)
            + p.per_request_s * requests
    }

    fn context_pair_s(&self) -> f64 {
        self.params
            .prefill_context_pair_s
            .unwrap_or(self.params.prefill_pair_s)
    }

    /// The share of the longest request's KV that one SM's piece holds: n / split_kv_requests
    /// below it (split-KV), else 1.
    fn split_share(&self, requests: f64) -> f64 {
        match self.params.split_kv_requests {
            Some(s) if requests < s => requests.max(0.0) / s,
            _ => 1.0,
        }
    }

    /// Decode attention time of a batch summary.
    pub fn decode_attention_time(&self, d: &DecodeSummary) -> f64 {
        let p = &self.params;
        let longest = p.het_width * d.max_kv * self.split_share(d.requests);
        let excess = (longest - d.kv_tokens).max(0.0);
        p.decode_kv_s * (d.kv_tokens + p.het_alpha * excess)
    }

    /// Prefill attention time of `new` query tokens over `context` cached ones.
    pub fn prefill_attention_time(&self, new: f64, context: f64) -> f64 {
        self.params.prefill_pair_s * new * (new + 1.0) / 2.0 + self.context_pair_s() * new * context
    }

    /// Predicted duration of one step running exactly `batch`.
    pub fn step_time(&self, batch: &[BatchItem]) -> f64 {
        let mut tokens = 0.0;
        let mut decode = DecodeSummary::default();
        let mut prefill_attn = 0.0;
        let mut extends = false;
        for item in batch {
            let new = item.new_tokens as f64;
            let ctx = item.context as f64;
            tokens += new;
            if item.new_tokens <= 1 {
                let kv = ctx + new;
                decode.requests += 1.0;
                decode.kv_tokens += kv;
                decode.max_kv = decode.max_kv.max(kv);
            } else {
                extends = true;
                prefill_attn += self.prefill_attention_time(new, ctx);
            }
        }
        let floor = if extends {
            self.extend_floor_s()
        } else {
            self.params.linear_floor_s
        };
        self.linear_time(tokens, batch.len() as f64, floor)
            + self.decode_attention_time(&decode)
            + prefill_attn
    }

    /// Step time of a pure decode batch given by its summary.
    pub fn decode_step_time(&self, d: &DecodeSummary) -> f64 {
        self.linear_time(d.requests, d.requests, self.params.linear_floor_s)
            + self.decode_attention_time(d)
    }

    /// Time to prefill a prompt of `prompt` tokens alone on an idle instance,
    /// in chunks of `chunked_prefill_size` (each chunk is one step, priced as a
    /// prefill item even when it holds one token: it runs the extend kernel).
    /// Non-decreasing in `prompt`: one more token never costs less.
    pub fn prefill_time(&self, prompt: f64) -> f64 {
        let prompt = prompt.round();
        if prompt <= 0.0 {
            return 0.0;
        }
        let chunk = self.params.chunked_prefill_size.round().max(1.0);
        let full_chunks = (prompt / chunk).floor();
        let rest = prompt - full_chunks * chunk;
        // Chunk c (0-based) computes `chunk` tokens over c * chunk cached ones;
        // the sums of their attention pairs over c, in closed form.
        let context_pairs = chunk * chunk * full_chunks * (full_chunks - 1.0) / 2.0;
        let causal_pairs = full_chunks * chunk * (chunk + 1.0) / 2.0;
        let floor = self.extend_floor_s();
        let mut time = self.params.prefill_pair_s * causal_pairs
            + self.context_pair_s() * context_pairs
            + full_chunks * self.linear_time(chunk, 1.0, floor);
        if rest > 0.0 {
            time += self.linear_time(rest, 1.0, floor)
                + self.prefill_attention_time(rest, full_chunks * chunk);
        }
        time
    }

    /// Decode tokens per second of one instance running `requests` requests
    /// whose KV reads average `mean_kv` and peak at `max_kv`.
    pub fn decode_throughput(&self, requests: f64, mean_kv: f64, max_kv: f64) -> f64 {
        if requests <= 0.0 {
            return 0.0;
        }
        let d = DecodeSummary {
            requests,
            kv_tokens: requests * mean_kv,
            max_kv: max_kv.max(mean_kv),
        };
        requests / self.decode_step_time(&d)
    }

    /// How many requests of mean KV `mean_kv` one instance can hold at once.
    pub fn max_concurrency(&self, mean_kv: f64) -> f64 {
        let p = &self.params;
        let by_kv = (p.kv_capacity_tokens / mean_kv.max(1.0)).floor();
        by_kv.min(p.max_running_requests).max(1.0)
    }

    /// Smallest concurrency `n` (real-valued) at which an instance decoding a
    /// fraction `busy` of its time delivers `rate` tokens/s, and the decode
    /// step time there. `None` when no `n` up to `max_concurrency` suffices.
    pub fn decode_operating_point(
        &self,
        rate: f64,
        busy: f64,
        mean_kv: f64,
        max_kv: f64,
    ) -> Option<(f64, f64)> {
        if rate <= 0.0 {
            return Some((0.0, self.decode_curve(mean_kv, max_kv).step(0.0)));
        }
        if busy <= 0.0 {
            return None;
        }
        self.decode_curve(mean_kv, max_kv).solve(rate / busy)
    }

    /// Decode step time as a function of batch size `n`, for requests of mean
    /// KV `mean_kv` beside a longest one of `max_kv`.
    pub fn decode_curve(&self, mean_kv: f64, max_kv: f64) -> DecodeCurve {
        let p = &self.params;
        let max_kv = max_kv.max(mean_kv);
        let n_cap = self.max_concurrency(mean_kv);
        let floor_cut = if p.linear_per_token_s > 0.0 {
            p.linear_floor_s / p.linear_per_token_s
        } else {
            f64::INFINITY
        };
        let het_cut = if mean_kv > 0.0 {
            p.het_width * max_kv / mean_kv
        } else {
            f64::INFINITY
        };
        let heavy_cut = if p.linear_heavy_per_token_s > 0.0 {
            p.linear_heavy_from_tokens
        } else {
            f64::INFINITY
        };
        let split_cut = p.split_kv_requests.unwrap_or(0.0);
        let mut cuts = [
            0.0,
            floor_cut.min(n_cap),
            het_cut.min(n_cap),
            heavy_cut.min(n_cap),
            split_cut.min(n_cap),
            n_cap,
        ];
        cuts.sort_by(|a, b| a.total_cmp(b));
        let mut pieces = [Piece::default(); 5];
        for (piece, w) in pieces.iter_mut().zip(cuts.windows(2)) {
            let mid = (w[0] + w[1]) / 2.0;
            let (below_floor, below_het) = (mid < floor_cut, mid < het_cut);
            let mut a = p.overhead_s;
            let mut b = p.per_request_s + p.decode_kv_s * mean_kv;
            if below_floor {
                a += p.linear_floor_s;
            } else {
                b += p.linear_per_token_s;
            }
            if mid > heavy_cut {
                a -= p.linear_heavy_per_token_s * p.linear_heavy_from_tokens;
                b += p.linear_heavy_per_token_s;
            }
            if mid < split_cut {
                // Split-KV: the longest piece is het_width * max_kv * n / split_cut, so the
                // excess over n * mean_kv grows with n (when positive at all).
                let per_request = p.het_width * max_kv / split_cut - mean_kv;
                if per_request > 0.0 {
                    b += p.decode_kv_s * p.het_alpha * per_request;
                }
            } else if below_het {
                a += p.decode_kv_s * p.het_alpha * p.het_width * max_kv;
                b -= p.decode_kv_s * p.het_alpha * mean_kv;
            }
            *piece = Piece {
                lo: w[0],
                hi: w[1],
                a,
                b,
            };
        }
        DecodeCurve { pieces, n_cap }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Default)]
struct Piece {
    lo: f64,
    hi: f64,
    a: f64,
    b: f64,
}

/// `step(n) = a + b n` on each of up to five pieces covering `[0, n_cap]`.
/// Every piece has `a >= 0` (the heavy term's check), so throughput
/// `n / step(n)` never falls as `n` grows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecodeCurve {
    pieces: [Piece; 5],
    n_cap: f64,
}

impl DecodeCurve {
    pub fn n_cap(&self) -> f64 {
        self.n_cap
    }

    pub fn step(&self, n: f64) -> f64 {
        let n = n.clamp(0.0, self.n_cap);
        let piece = self
            .pieces
            .iter()
            .find(|p| n <= p.hi && p.hi > p.lo)
            .unwrap_or(&self.pieces[4]);
        piece.a + piece.b * n
    }

    /// Decode tokens per second at the largest batch.
    pub fn max_throughput(&self) -> f64 {
        self.n_cap / self.step(self.n_cap)
    }

    /// Smallest `n` in `[0, n_cap]` with `n = demand * step(n)`, and `step(n)`.
    /// `n - demand * step(n)` is continuous, linear on each piece and negative
    /// at 0, so scanning the pieces in order finds the smallest root (step is
    /// not convex with split-KV: its length-mix term rises, then falls).
    pub fn solve(&self, demand: f64) -> Option<(f64, f64)> {
        if demand <= 0.0 {
            return Some((0.0, self.step(0.0)));
        }
        for p in self.pieces.iter().filter(|p| p.hi > p.lo) {
            let denom = 1.0 - demand * p.b;
            if denom <= 0.0 {
                continue;
            }
            let n = demand * p.a / denom;
            if n >= p.lo && n <= p.hi {
                return Some((n, p.a + p.b * n));
            }
        }
        None
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn h100() -> CostModel {
        CostModel::from_json(include_str!(
            "../../python/l4_sglang/data/costmodels/llama3-8b-h100-default.json"
        ))
        .unwrap()
    }

    /// The default H100 model with its floor moved into the step overhead, and
    /// the heavy-step and cached-prefix terms switched on (heavy * from =
    /// 5.12 ms <= overhead 5.5 ms).
    fn h100_heavy() -> CostModel {
        let mut p = h100().params;
        p.overhead_s = 0.0055;
        p.linear_floor_s = 0.0;
        p.linear_heavy_per_token_s = 1e-5;
        p.linear_heavy_from_tokens = 512.0;
        p.prefill_context_pair_s = Some(2.0 * p.prefill_pair_s);
        CostModel::new(p).unwrap()
    }

    /// The heavy model with an extend floor of 11 ms (a 512-token knee at 21.5 us per token)
    /// and a decode floor of 2.8 ms, the shape of the H200 Triton fit.
    fn h100_extend() -> CostModel {
        let mut p = h100_heavy().params;
        p.linear_per_token_s = 2.15e-5;
        p.linear_floor_s = 0.0028;
        p.extend_floor_s = Some(0.011);
        CostModel::new(p).unwrap()
    }

    /// The default H100 model with split-KV below 16 decode requests.
    fn h100_split() -> CostModel {
        let mut p = h100().params;
        p.split_kv_requests = Some(16.0);
        CostModel::new(p).unwrap()
    }

    fn decode_batch(contexts: &[u64]) -> Vec<BatchItem> {
        contexts
            .iter()
            .map(|&c| BatchItem {
                new_tokens: 1,
                context: c,
            })
            .collect()
    }

    #[test]
    fn step_time_grows_with_context() {
        let m = h100();
        let mut last = 0.0;
        for ctx in [0, 100, 1_000, 10_000, 100_000] {
            let t = m.step_time(&decode_batch(&[ctx; 8]));
            assert!(t > last, "ctx {ctx}: {t} <= {last}");
            last = t;
        }
    }

    #[test]
    fn mixed_batch_costs_more_than_its_homogeneous_twin() {
        let m = h100();
        // One 128K request beside 63 short ones vs 64 of the same mean: same total KV.
        let mut mixed = vec![2_048u64; 63];
        mixed.push(131_072);
        let total: u64 = mixed.iter().sum();
        assert_eq!(total % 64, 0);
        let homogeneous = vec![total / 64; 64];
        let (t_mixed, t_hom) = (
            m.step_time(&decode_batch(&mixed)),
            m.step_time(&decode_batch(&homogeneous)),
        );
        assert!(
            t_mixed > 1.5 * t_hom,
            "mixed {t_mixed} vs homogeneous {t_hom}"
        );
        // Without the length-mix term the two cost the same.
        let flat = m.without_heterogeneity();
        let (a, b) = (
            flat.step_time(&decode_batch(&mixed)),
            flat.step_time(&decode_batch(&homogeneous)),
        );
        assert!((a - b).abs() < 1e-12 * a.max(1.0));
    }

    #[test]
    fn prefill_time_matches_stepwise_sum() {
        for m in [h100(), h100_heavy(), h100_extend()] {
            prefill_time_matches_stepwise_sum_of(&m);
        }
    }

    fn prefill_time_matches_stepwise_sum_of(m: &CostModel) {
        let chunk = m.params.chunked_prefill_size as u64;
        for prompt in [
            2u64,
            100,
            chunk - 1,
            chunk,
            chunk + 2,
            3 * chunk + 17,
            100_000,
        ] {
            let (mut done, mut sum) = (0, 0.0);
            while done < prompt {
                let new = chunk.min(prompt - done);
                sum += m.step_time(&[BatchItem {
                    new_tokens: new,
                    context: done,
                }]);
                done += new;
            }
            let closed = m.prefill_time(prompt as f64);
            assert!(
                (closed - sum).abs() <= 1e-9 * sum,
                "prompt {prompt}: {closed} vs {sum}"
            );
        }
    }

    #[test]
    fn prefill_time_never_falls() {
        for m in [h100(), h100_heavy(), h100_extend()] {
            prefill_time_never_falls_of(&m);
        }
    }

    fn prefill_time_never_falls_of(m: &CostModel) {
        let chunk = m.params.chunked_prefill_size as u64;
        let mut last = 0.0;
        let edges = [
            0,
            1,
            2,
            3,
            chunk - 1,
            chunk,
            chunk + 1,
            chunk + 2,
            2 * chunk,
            2 * chunk + 1,
            131_072,
        ];
        let probes = (0..3_000u64).chain(edges).chain((0..200).map(|k| k * 997));
        let mut all: Vec<u64> = probes.collect();
        all.sort_unstable();
        for p in all {
            let t = m.prefill_time(p as f64);
            assert!(t >= last, "prefill({p}) = {t} < {last}");
            last = t;
        }
    }

    #[test]
    fn heavy_term_prices_tokens_past_its_mark() {
        let heavy = h100_heavy();
        let mut p = heavy.params.clone();
        p.linear_heavy_per_token_s = 0.0;
        let plain = CostModel::new(p).unwrap();
        // 8 prompts of 1K in one step: 7,680 tokens past the mark (512) at 10 us each.
        let eight = vec![
            BatchItem {
                new_tokens: 1024,
                context: 0
            };
            8
        ];
        let extra = heavy.step_time(&eight) - plain.step_time(&eight);
        assert!((extra - 7680.0 * 1e-5).abs() < 1e-9, "{extra}");
        // Decode batches too: the linear layers see tokens, whatever kind.
        let small = decode_batch(&[500; 500]);
        assert_eq!(heavy.step_time(&small), plain.step_time(&small));
        let large = decode_batch(&[500; 2048]);
        let extra = heavy.step_time(&large) - plain.step_time(&large);
        assert!((extra - 1536.0 * 1e-5).abs() < 1e-12, "{extra}");
    }

    #[test]
    fn decode_curve_is_the_step_time_and_throughput_never_falls() {
        for m in [h100(), h100_heavy(), h100_split()] {
            for (mean, max) in [(500.0, 500.0), (2_000.0, 60_000.0), (30_000.0, 60_000.0)] {
                let curve = m.decode_curve(mean, max);
                let mut last = 0.0;
                for n in (1..=2_000).map(f64::from) {
                    if n > curve.n_cap() {
                        break;
                    }
                    let step = m.decode_step_time(&DecodeSummary {
                        requests: n,
                        kv_tokens: n * mean,
                        max_kv: max.max(mean),
                    });
                    assert!((curve.step(n) - step).abs() <= 1e-12, "n {n}");
                    let throughput = n / step;
                    assert!(throughput >= last * (1.0 - 1e-12), "n {n}");
                    last = throughput;
                }
            }
        }
    }

    #[test]
    fn split_kv_spares_small_batches_the_length_mix_penalty() {
        let (plain, split) = (h100(), h100_split());
        let w = plain.params.het_width;
        // A lone 60K decode: without the split it costs het_width times its KV read.
        let lone = decode_batch(&[60_000]);
        let kv = plain.params.decode_kv_s * 60_001.0;
        let plain_attn = plain.step_time(&lone) - plain.decode_step_time(&DecodeSummary::default());
        assert!(plain_attn > 0.9 * w * kv, "{plain_attn}");
        let share = 1.0 / 16.0;
        let expected = kv * (1.0 + plain.params.het_alpha * (w * share - 1.0).max(0.0));
        let split_attn = split.decode_attention_time(&DecodeSummary {
            requests: 1.0,
            kv_tokens: 60_001.0,
            max_kv: 60_001.0,
        });
        assert!(
            (split_attn - expected).abs() <= 1e-12,
            "{split_attn} vs {expected}"
        );
        // 1 long beside 63 short: past the split, the full penalty as before.
        let mut mixed = vec![1_000u64; 63];
        mixed.push(120_000);
        let batch = decode_batch(&mixed);
        assert_eq!(split.step_time(&batch), plain.step_time(&batch));
        // Continuous and non-decreasing in the batch size across the switch.
        let step = |n: f64| {
            split.decode_step_time(&DecodeSummary {
                requests: n,
                kv_tokens: 60_000.0 + (n - 1.0) * 1_000.0,
                max_kv: 60_000.0,
            })
        };
        let (below, above) = (step(16.0 - 1e-9), step(16.0));
        assert!((above - below).abs() <= 1e-9 * above, "{below} {above}");
        for n in 1..64 {
            assert!(step(n as f64 + 1.0) >= step(n as f64), "n {n}");
        }
    }

    #[test]
    fn operating_point_is_the_smallest_root_with_split_kv() {
        // The step is not convex with split-KV; the solve must still find the first root.
        let m = h100_split();
        let (mean, max) = (2_000.0, 120_000.0);
        for rate in [50.0, 400.0, 1_500.0, 3_000.0] {
            let Some((n, _)) = m.decode_operating_point(rate, 1.0, mean, max) else {
                continue;
            };
            let curve = m.decode_curve(mean, max);
            let mut x = 0.0;
            while x < n - 1e-6 {
                assert!(
                    x < rate * curve.step(x),
                    "rate {rate}: root at {x} before {n}"
                );
                x += 0.01;
            }
        }
    }

    #[test]
    fn extend_floor_prices_steps_with_a_prefill_item() {
        let m = h100_extend();
        let mut p = m.params.clone();
        p.extend_floor_s = None;
        let plain = CostModel::new(p).unwrap();
        let prompt = |n: u64| BatchItem {
            new_tokens: n,
            context: 0,
        };
        // A 16-token prompt: the extend floor (11 ms) in place of the decode floor (2.8 ms).
        let extra = m.step_time(&[prompt(16)]) - plain.step_time(&[prompt(16)]);
        assert!((extra - (0.011 - 0.0028)).abs() < 1e-12, "{extra}");
        // Past the knee (512 tokens at 21.5 us) the tokens cost the same either way.
        assert_eq!(
            m.step_time(&[prompt(2048)]),
            plain.step_time(&[prompt(2048)])
        );
        // A decode batch keeps the decode floor; one prefill item in it lifts the whole step.
        let decode = decode_batch(&[1000; 8]);
        assert_eq!(m.step_time(&decode), plain.step_time(&decode));
        let mut mixed = decode.clone();
        mixed.push(prompt(64));
        assert!(m.step_time(&mixed) > plain.step_time(&mixed));
        assert!(m.prefill_time(100.0) > plain.prefill_time(100.0));
        assert_eq!(m.prefill_time(4096.0), plain.prefill_time(4096.0));
        // Unset, it is the decode floor, and omitted so older calibrations round-trip unchanged.
        assert!(!h100().to_json().contains("extend_floor_s"));
        assert!(m.to_json().contains("extend_floor_s"));
    }

    #[test]
    fn cached_prefix_pairs_default_to_the_causal_price() {
        let m = h100();
        let mut p = m.params.clone();
        p.prefill_context_pair_s = Some(p.prefill_pair_s);
        let explicit = CostModel::new(p).unwrap();
        let item = [BatchItem {
            new_tokens: 4096,
            context: 20_000,
        }];
        assert_eq!(m.step_time(&item), explicit.step_time(&item));
        assert_eq!(m.prefill_time(50_000.0), explicit.prefill_time(50_000.0));
        // Twice the prefix price: exactly the prefix part doubles.
        let doubled = h100_heavy().prefill_attention_time(4096.0, 20_000.0)
            - m.prefill_attention_time(4096.0, 20_000.0);
        let prefix_part = m.params.prefill_pair_s * 4096.0 * 20_000.0;
        assert!((doubled - prefix_part).abs() <= 1e-12 * prefix_part.max(1.0));
        // Omitted when unset, so older calibrations round-trip unchanged.
        assert!(!m.to_json().contains("prefill_context_pair_s"));
    }

    #[test]
    fn operating_point_solves_its_equation() {
        for m in [h100(), h100_heavy(), h100_extend(), h100_split()] {
            operating_point_solves_its_equation_of(&m);
        }
    }

    fn operating_point_solves_its_equation_of(m: &CostModel) {
        for (rate, busy, mean, max) in [
            (16_700.0, 1.0, 200.0, 200.0), // past the heavy mark (949 requests) when it is on
            (100.0, 1.0, 2_000.0, 4_000.0),
            (2_000.0, 0.7, 500.0, 1_000.0),
            (50.0, 0.9, 60_000.0, 120_000.0),
        ] {
            let (n, step) = m
                .decode_operating_point(rate, busy, mean, max)
                .expect("feasible");
            let expected = m.decode_step_time(&DecodeSummary {
                requests: n,
                kv_tokens: n * mean,
                max_kv: max,
            });
            assert!((step - expected).abs() <= 1e-9 * expected);
            assert!(
                (n - rate / busy * step).abs() <= 1e-6 * n.max(1.0),
                "n {n} step {step}"
            );
        }
    }

    #[test]
    fn operating_point_refuses_overload() {
        let m = h100();
        // More long-context tokens per second than any concurrency can deliver.
        assert!(m
            .decode_operating_point(1e6, 1.0, 100_000.0, 120_000.0)
            .is_none());
        assert!(m
            .decode_operating_point(10.0, 0.0, 1_000.0, 1_000.0)
            .is_none());
    }

    #[test]
    fn bad_parameters_name_their_field() {
        let mut p = h100().params;
        p.decode_kv_s = f64::NAN;
        let err = CostModel::new(p).unwrap_err().to_string();
        assert!(err.contains("decode_kv_s"), "{err}");
        let err = CostModel::from_json("{\"name\": 3}")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cost_model"), "{err}");
        // A heavy term whose step would deliver fewer tokens per second as it grows.
        let mut p = h100_heavy().params;
        p.linear_heavy_per_token_s = 2e-5;
        let err = CostModel::new(p).unwrap_err().to_string();
        assert!(err.contains("linear_heavy_per_token_s"), "{err}");
        let mut p = h100().params;
        p.extend_floor_s = Some(-1e-3);
        let err = CostModel::new(p).unwrap_err().to_string();
        assert!(err.contains("extend_floor_s"), "{err}");
    }
}
