"""Names vulture (tests/test_dead_code.py, confidence 60) reports as unused that are used.

Each group says who uses them. vulture matches names, not places: an entry whitelists the name
everywhere, so keep the list short and re-check it when a group's reason goes away.
"""
# ruff: noqa
# fmt: off
_ = object()

# Called by Python or by a library, never by name in repdeploy.
__getattr__; __dir__; _.__class__        # PEP 562 module attributes (the lazy facades), module classes
_.forward; _.extra_repr                  # torch.nn.Module hooks
_.showwarning                            # warnings.showwarning, replaced under the CLI
category; lineno; tb                     # positional parameters of warnings.showwarning, __exit__
_.levelname                              # a logging record's level name, read by Formatters
_.inter_op_num_threads; _.graph_optimization_level; _.log_severity_level   # onnxruntime.SessionOptions

# Fields of result records: written to report.json / --json through dataclasses.asdict and
# read by the report writers and by callers of the Python API (docs/api.md).
warmup_s; min_duration_s; min_iterations; measured_s; throughput_ips; high_variance; max_duration_s
min_ms; mean_ms; p50_ms; p90_ms; p95_ms; p99_ms; max_ms; std_ms; cv; iqr_ms
mean_abs_diff; top1_a; top1_b; _.top1_a; _.top1_b
cached
fp32_ms; fp32_ms_ci; int8_ms_ci; speedup_sessions; qat_top1
_.fp32_ms; _.fp32_ms_ci; _.int8_ms_ci; _.speedup_sessions; _.qat_top1
interpolation
weight_min; weight_max; weight_std; activation_amax; own_sqnr_db; _.own_sqnr_db
_.holdout_source; _.holdout_images; int8_top1_before; holdout_source; holdout_images
score
compares; max_sqnr_loss_db
images_per_second; resumed_from_step

# Public API that repdeploy itself does not call (docs/api.md, docs/serving.md, docs/triton.md),
# used by callers, benchmarks/ and tests/.
tensorrt_available                       # whether the TensorRT backend is importable
randomize_batchnorm                      # realistic BN statistics for benchmarks/ and tests/
_.last_host_latency                      # the TensorRT runner's host wall time beside its GPU time
_.predict; _.predict_batch               # serving.Model
watch                                    # progress.watch: tests/ and benchmarks/ record stage lines with it
