//! PyO3 bindings: the only place that knows about Python. Typed errors from
//! the core become `ValueError`; heavy calls release the GIL.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::balance::{self, DiffusionConfig, InstanceLoad, MigrationConfig, RunningRequest};
use crate::cost_model::{BatchItem, CostModel, DecodeSummary};
use crate::error::CoreError;
use crate::partition::{self, InstanceClass, Partition, QoeConfig, Workload};

fn value_error(e: CoreError) -> PyErr {
    PyValueError::new_err(e.to_string())
}

fn check_finite(field: &'static str, v: f64) -> PyResult<()> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err(PyValueError::new_err(format!(
            "invalid {field}: must be finite and >= 0, got {v}"
        )))
    }
}

#[pyclass(name = "CostModel", module = "l4_sglang._core", frozen)]
struct PyCostModel {
    inner: CostModel,
}

#[pymethods]
impl PyCostModel {
    #[staticmethod]
    fn from_json(text: &str) -> PyResult<Self> {
        CostModel::from_json(text)
            .map(|inner| PyCostModel { inner })
            .map_err(value_error)
    }

    fn to_json(&self) -> String {
        self.inner.to_json()
    }

    #[getter]
    fn name(&self) -> String {
        self.inner.params.name.clone()
    }

    fn without_heterogeneity(&self) -> Self {
        PyCostModel {
            inner: self.inner.without_heterogeneity(),
        }
    }

    /// Step time of a batch given as (new_tokens, context) pairs.
    fn step_time(&self, batch: Vec<(u64, u64)>) -> f64 {
        let items: Vec<BatchItem> = batch
            .into_iter()
            .map(|(new_tokens, context)| BatchItem {
                new_tokens,
                context,
            })
            .collect();
        self.inner.step_time(&items)
    }

    fn prefill_time(&self, prompt_tokens: f64) -> PyResult<f64> {
        check_finite("prompt_tokens", prompt_tokens)?;
        Ok(self.inner.prefill_time(prompt_tokens))
    }

    fn decode_step_time(&self, requests: f64, kv_tokens: f64, max_kv: f64) -> PyResult<f64> {
        check_finite("requests", requests)?;
        check_finite("kv_tokens", kv_tokens)?;
        check_finite("max_kv", max_kv)?;
        Ok(self.inner.decode_step_time(&DecodeSummary {
            requests,
            kv_tokens,
            max_kv,
        }))
    }

    fn decode_throughput(&self, requests: f64, mean_kv: f64, max_kv: f64) -> PyResult<f64> {
        check_finite("requests", requests)?;
        check_finite("mean_kv", mean_kv)?;
        check_finite("max_kv", max_kv)?;
        Ok(self.inner.decode_throughput(requests, mean_kv, max_kv))
    }

    fn max_concurrency(&self, mean_kv: f64) -> PyResult<f64> {
        check_finite("mean_kv", mean_kv)?;
        Ok(self.inner.max_concurrency(mean_kv))
    }

    fn decode_operating_point(
        &self,
        rate: f64,
        busy: f64,
        mean_kv: f64,
        max_kv: f64,
    ) -> PyResult<Option<(f64, f64)>> {
        for (f, v) in [
            ("rate", rate),
            ("busy", busy),
            ("mean_kv", mean_kv),
            ("max_kv", max_kv),
        ] {
            check_finite(f, v)?;
        }
        Ok(self
            .inner
            .decode_operating_point(rate, busy, mean_kv, max_kv))
    }

    fn __repr__(&self) -> String {
        format!("CostModel(name={:?})", self.inner.params.name)
    }
}

/// (edges, arrival_rate, prompt_tokens, decode_rate, decode_context, growth_rate), as
/// `l4_sglang.core.Workload._args()` sends it.
type WorkloadArgs = (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>);
/// (slo_ttft_s, slo_tpot_s, slo_penalty_s, max_utilization, overload_horizon_s), as
/// `QoeConfig._args()` sends it.
type QoeArgs = (f64, f64, f64, f64, f64);

fn workload(args: WorkloadArgs) -> Workload {
    let (edges, arrival_rate, prompt_tokens, decode_rate, decode_context, growth_rate) = args;
    Workload {
        edges,
        arrival_rate,
        prompt_tokens,
        decode_rate,
        decode_context,
        growth_rate,
    }
}

fn qoe(
    (slo_ttft_s, slo_tpot_s, slo_penalty_s, max_utilization, overload_horizon_s): QoeArgs,
) -> QoeConfig {
    QoeConfig {
        slo_ttft_s,
        slo_tpot_s,
        slo_penalty_s,
        max_utilization,
        overload_horizon_s,
    }
}

fn partition_dict<'py>(py: Python<'py>, p: &Partition) -> PyResult<Bound<'py, PyDict>> {
    let out = PyDict::new(py);
    let stages = p
        .stages
        .iter()
        .map(|s| {
            let d = PyDict::new(py);
            d.set_item("class_index", s.class)?;
            d.set_item("first_bin", s.first_bin)?;
            d.set_item("end_bin", s.end_bin)?;
            d.set_item("lo_tokens", s.lo_tokens)?;
            d.set_item("hi_tokens", s.hi_tokens)?;
            d.set_item("instances", s.instances)?;
            d.set_item("arrival_rate", s.arrival_rate)?;
            d.set_item("migration_in_rate", s.migration_in_rate)?;
            d.set_item("decode_rate", s.decode_rate)?;
            d.set_item("utilization", s.utilization)?;
            d.set_item("prefill_utilization", s.prefill_utilization)?;
            d.set_item("mean_ttft_s", s.mean_ttft_s)?;
            d.set_item("tpot_s", s.tpot_s)?;
            d.set_item("latency_rate", s.latency_rate)?;
            d.set_item("violation_rate", s.violation_rate)?;
            d.set_item("cost", s.cost)?;
            d.set_item("feasible", s.feasible)?;
            Ok(d)
        })
        .collect::<PyResult<Vec<_>>>()?;
    out.set_item("stages", stages)?;
    out.set_item("total_cost", p.total_cost)?;
    out.set_item("mean_e2e_s", p.mean_e2e_s)?;
    out.set_item("ttft_attainment", p.ttft_attainment)?;
    out.set_item("tpot_attainment", p.tpot_attainment)?;
    out.set_item("feasible", p.feasible)?;
    out.set_item("excess_work", p.excess_work)?;
    Ok(out)
}

#[pyfunction]
#[pyo3(name = "partition")]
fn py_partition<'py>(
    py: Python<'py>,
    model: &PyCostModel,
    workload_args: WorkloadArgs,
    instances: usize,
    qoe_args: QoeArgs,
) -> PyResult<Bound<'py, PyDict>> {
    let (w, q) = (workload(workload_args), qoe(qoe_args));
    let m = &model.inner;
    let result = py
        .detach(|| partition::partition(m, &w, instances, q))
        .map_err(value_error)?;
    partition_dict(py, &result)
}

#[pyfunction]
#[pyo3(name = "evaluate_layout")]
fn py_evaluate_layout<'py>(
    py: Python<'py>,
    model: &PyCostModel,
    workload_args: WorkloadArgs,
    cuts: Vec<usize>,
    instances: Vec<usize>,
    qoe_args: QoeArgs,
) -> PyResult<Bound<'py, PyDict>> {
    let (w, q) = (workload(workload_args), qoe(qoe_args));
    let result =
        partition::evaluate(&model.inner, &w, q, &cuts, &instances).map_err(value_error)?;
    partition_dict(py, &result)
}

#[pyfunction]
#[pyo3(name = "merge_stages")]
#[allow(clippy::too_many_arguments)]
fn py_merge_stages<'py>(
    py: Python<'py>,
    model: &PyCostModel,
    workload_args: WorkloadArgs,
    cuts: Vec<usize>,
    instances: Vec<usize>,
    qoe_args: QoeArgs,
    stage_gain: f64,
) -> PyResult<Bound<'py, PyDict>> {
    let (w, q) = (workload(workload_args), qoe(qoe_args));
    let result = partition::merge_stages(&model.inner, &w, q, &cuts, &instances, stage_gain)
        .map_err(value_error)?;
    partition_dict(py, &result)
}

fn classes_from<'m>(
    models: &'m [PyRef<'_, PyCostModel>],
    counts: &[usize],
) -> PyResult<Vec<InstanceClass<'m>>> {
    if counts.len() != models.len() {
        return Err(PyValueError::new_err(format!(
            "invalid counts: has {} counts for {} cost models",
            counts.len(),
            models.len()
        )));
    }
    Ok(models
        .iter()
        .zip(counts)
        .map(|(m, &count)| InstanceClass {
            model: &m.inner,
            count,
        })
        .collect())
}

#[pyfunction]
#[pyo3(name = "partition_classes")]
fn py_partition_classes<'py>(
    py: Python<'py>,
    models: Vec<PyRef<'py, PyCostModel>>,
    counts: Vec<usize>,
    workload_args: WorkloadArgs,
    qoe_args: QoeArgs,
) -> PyResult<Bound<'py, PyDict>> {
    let (w, q) = (workload(workload_args), qoe(qoe_args));
    let classes = classes_from(&models, &counts)?;
    let result = py
        .detach(|| partition::partition_classes(&classes, &w, q))
        .map_err(value_error)?;
    partition_dict(py, &result)
}

#[allow(clippy::too_many_arguments)]
#[pyfunction]
#[pyo3(name = "evaluate_layout_classes")]
fn py_evaluate_layout_classes<'py>(
    py: Python<'py>,
    models: Vec<PyRef<'py, PyCostModel>>,
    counts: Vec<usize>,
    workload_args: WorkloadArgs,
    cuts: Vec<usize>,
    instances: Vec<usize>,
    stage_classes: Vec<usize>,
    qoe_args: QoeArgs,
) -> PyResult<Bound<'py, PyDict>> {
    let (w, q) = (workload(workload_args), qoe(qoe_args));
    let classes = classes_from(&models, &counts)?;
    let result = partition::evaluate_classes(&classes, &w, q, &cuts, &instances, &stage_classes)
        .map_err(value_error)?;
    partition_dict(py, &result)
}

type LoadTuple = (f64, f64, f64, f64, f64, f64);

fn loads_from(tuples: Vec<LoadTuple>) -> Vec<InstanceLoad> {
    tuples
        .into_iter()
        .map(
            |(running, kv_tokens, max_kv, queued_requests, queued_tokens, mean_remaining)| {
                InstanceLoad {
                    running,
                    kv_tokens,
                    max_kv,
                    queued_requests,
                    queued_tokens,
                    mean_remaining,
                }
            },
        )
        .collect()
}

#[pyfunction]
#[pyo3(name = "predicted_work")]
fn py_predicted_work(model: &PyCostModel, load: LoadTuple, horizon_steps: f64) -> PyResult<f64> {
    let l = loads_from(vec![load])[0];
    l.validate(0).map_err(value_error)?;
    check_finite("horizon_steps", horizon_steps)?;
    Ok(balance::predicted_work(&model.inner, &l, horizon_steps))
}

#[pyfunction]
#[pyo3(name = "pick_instance_models")]
fn py_pick_instance_models(
    models: Vec<PyRef<'_, PyCostModel>>,
    loads: Vec<LoadTuple>,
    candidates: usize,
    horizon_steps: f64,
    seed: u64,
) -> PyResult<usize> {
    let models: Vec<&CostModel> = models.iter().map(|m| &m.inner).collect();
    balance::pick_instance_models(&models, &loads_from(loads), candidates, horizon_steps, seed)
        .map_err(value_error)
}

#[pyfunction]
#[pyo3(name = "pick_marginal")]
fn py_pick_marginal(
    models: Vec<PyRef<'_, PyCostModel>>,
    loads: Vec<LoadTuple>,
    prompt: f64,
    horizon_steps: f64,
) -> PyResult<usize> {
    let models: Vec<&CostModel> = models.iter().map(|m| &m.inner).collect();
    balance::pick_marginal(&models, &loads_from(loads), prompt, horizon_steps).map_err(value_error)
}

#[pyfunction]
#[pyo3(name = "diffuse_boundary")]
fn py_diffuse_boundary(
    boundary: f64,
    lower_load: f64,
    upper_load: f64,
    min_tokens: f64,
    max_tokens: f64,
    rate: f64,
    deadband: f64,
) -> PyResult<f64> {
    let cfg = DiffusionConfig { rate, deadband };
    balance::diffuse_boundary(
        boundary, lower_load, upper_load, min_tokens, max_tokens, cfg,
    )
    .map_err(value_error)
}

#[pyfunction]
#[pyo3(name = "move_value", signature = (model, context, remaining, source, source_after, target, target_model = None))]
#[allow(clippy::too_many_arguments)]
fn py_move_value(
    model: &PyCostModel,
    context: f64,
    remaining: f64,
    source: LoadTuple,
    source_after: LoadTuple,
    target: LoadTuple,
    target_model: Option<&PyCostModel>,
) -> PyResult<(f64, f64)> {
    check_finite("context", context)?;
    check_finite("remaining", remaining)?;
    let l = loads_from(vec![source, source_after, target]);
    for (i, load) in l.iter().enumerate() {
        load.validate(i).map_err(value_error)?;
    }
    let req = RunningRequest {
        id: 0,
        context,
        remaining,
    };
    let target_model = target_model.map_or(&model.inner, |m| &m.inner);
    Ok(balance::move_value_between(
        &model.inner,
        target_model,
        &req,
        &l[0],
        &l[1],
        &l[2],
    ))
}

fn migration_dict<'py>(
    py: Python<'py>,
    found: Option<balance::Migration>,
) -> PyResult<Option<Bound<'py, PyDict>>> {
    found
        .map(|m| {
            let d = PyDict::new(py);
            d.set_item("request", m.request)?;
            d.set_item("source", m.source)?;
            d.set_item("target", m.target)?;
            d.set_item("gain_s", m.gain_s)?;
            d.set_item("cost_s", m.cost_s)?;
            Ok(d)
        })
        .transpose()
}

fn requests_from(requests: Vec<Vec<(u64, f64, f64)>>) -> Vec<Vec<RunningRequest>> {
    requests
        .into_iter()
        .map(|list| {
            list.into_iter()
                .map(|(id, context, remaining)| RunningRequest {
                    id,
                    context,
                    remaining,
                })
                .collect()
        })
        .collect()
}

#[pyfunction]
#[pyo3(name = "pick_migration_models")]
fn py_pick_migration_models<'py>(
    py: Python<'py>,
    models: Vec<PyRef<'py, PyCostModel>>,
    loads: Vec<LoadTuple>,
    requests: Vec<Vec<(u64, f64, f64)>>,
    min_gap: f64,
    margin: f64,
    horizon_steps: f64,
) -> PyResult<Option<Bound<'py, PyDict>>> {
    let cfg = MigrationConfig {
        min_gap,
        margin,
        horizon_steps,
    };
    let models: Vec<&CostModel> = models.iter().map(|m| &m.inner).collect();
    let found =
        balance::pick_migration_models(&models, &loads_from(loads), &requests_from(requests), cfg)
            .map_err(value_error)?;
    migration_dict(py, found)
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add(
        "build_profile",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
    )?;
    m.add_class::<PyCostModel>()?;
    m.add_function(wrap_pyfunction!(py_partition, m)?)?;
    m.add_function(wrap_pyfunction!(py_evaluate_layout, m)?)?;
    m.add_function(wrap_pyfunction!(py_merge_stages, m)?)?;
    m.add_function(wrap_pyfunction!(py_predicted_work, m)?)?;
    m.add_function(wrap_pyfunction!(py_diffuse_boundary, m)?)?;
    m.add_function(wrap_pyfunction!(py_move_value, m)?)?;
    m.add_function(wrap_pyfunction!(py_partition_classes, m)?)?;
    m.add_function(wrap_pyfunction!(py_evaluate_layout_classes, m)?)?;
    m.add_function(wrap_pyfunction!(py_pick_instance_models, m)?)?;
    m.add_function(wrap_pyfunction!(py_pick_marginal, m)?)?;
    m.add_function(wrap_pyfunction!(py_pick_migration_models, m)?)?;
    Ok(())
}
