"""The stress zoo: a RepVGG / RepOpt-VGG pair where PTQ at default settings really loses accuracy.

Figures measured on the built-in val split (400 images, 1 image = 0.25 points; docs/benchmarks.md):
RepVGG-mini FP32 98.25, PTQ 89.00, QAT 98.00; RepOpt-VGG-mini FP32 99.00, PTQ 99.00, QAT 98.75.
The bounds are the issue's claims, not the measured figures, so a retrained or re-calibrated
model passes only if it still shows the effect. QAT runs as `pipeline --zoo stress --qat` does,
at its default settings (2 epochs, distillation, the RepVGG's branch-BN gradient prior, SGD at
the sharpness-capped default lr, trained ranges).
"""

import pytest

from repdeploy import InputError, quantize, qat
from repdeploy.zoo import builtin_zoo

STRESS = {e.family: e for e in builtin_zoo("stress")}
QAT_EPOCHS = 2  # what `pipeline --qat` runs by default


def test_stress_zoo_is_opt_in():
    assert set(STRESS) == {"repvgg", "repopt"}
    assert all(e.zoo == "stress" and e.file.is_file() for e in STRESS.values())
    assert not {e.name for e in builtin_zoo()} & {e.name for e in STRESS.values()}  # `make demo` runs as before
    with pytest.raises(InputError, match="unknown zoo 'hard'"):
        builtin_zoo("hard")


@pytest.fixture(scope="module")
def figures(tmp_path_factory):
    out = {}
    for family, entry in STRESS.items():
        ptq_dir = tmp_path_factory.mktemp(f"ptq_{family}")
        ptq = quantize(str(entry.file), output_dir=ptq_dir, calib_data="builtin", eval_data="builtin", device="cpu")
        result = qat(str(entry.file), train_data="builtin", output_dir=tmp_path_factory.mktemp(f"qat_{family}"),
                     epochs=QAT_EPOCHS, calib_cache=ptq.calib_cache, distill=True,
                     grad_mult="bn" if family == "repvgg" else "none", device="cpu")
        out[family] = (ptq.report["fp32_top1"], ptq.report["int8_top1"], result.qat_top1)
        # qat's fixed default (0.01) sends these models to chance: their distillation loss is ~7x
        # sharper than the default zoo model's, so the cap must have lowered it.
        assert result.report["lr"] < 0.01 and result.report["lr_sharpness"] > 200, family
        print(f"\n{entry.name}: FP32 {out[family][0]:.2f}  PTQ {out[family][1]:.2f}  QAT {out[family][2]:.2f}")
    return out


def test_ptq_loses_on_repvgg_and_clearly_less_on_repopt(figures):
    fp32, ptq, _ = figures["repvgg"]
    assert fp32 > 95.0  # a trained classifier, so the drop is quantization's
    assert fp32 - ptq >= 3.0
    repopt_fp32, repopt_ptq, _ = figures["repopt"]
    assert repopt_fp32 - repopt_ptq <= 1.0 and (fp32 - ptq) - (repopt_fp32 - repopt_ptq) >= 3.0


def test_qat_recovers_to_within_half_a_point(figures):
    for family, (fp32, _, qat_top1) in figures.items():
        assert qat_top1 >= fp32 - 0.5, family


def test_zoo_with_checkpoints_is_refused_in_one_line(tmp_path):
    from click.testing import CliRunner

    from repdeploy.cli import main

    r = CliRunner().invoke(main, ["pipeline", str(STRESS["repvgg"].file), "--zoo", "stress", "-o", str(tmp_path / "o")])
    assert r.exit_code == 2 and r.output.strip().startswith("error: --zoo stress with checkpoints"), r.output
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_pipeline_runs_the_stress_zoo_with_a_given_qat_lr(tmp_path):
    import json
    from pathlib import Path

    from repdeploy import run_pipeline

    qat_lr = 0.001  # an explicit --qat-lr reaches qat unchanged (no sharpness cap)
    result = run_pipeline([], output_dir=tmp_path, zoo="stress", qat=True, qat_epochs=1, qat_lr=qat_lr,
                          calib_samples=64, eval_limit=100, warmup=0.0, duration=0.0, iterations=3, max_duration=0.0)
    assert [r.name for r in result.rows] == [e.name for e in builtin_zoo("stress")]
    assert all(r.status == "PASSED" and r.qat_top1 is not None for r in result.rows), [r.error for r in result.rows]
    qat_report = json.loads((Path(result.rows[0].run_dir) / "qat_report.json").read_text())
    assert qat_report["lr"] == qat_lr and result.settings.qat_lr == qat_lr and qat_report["lr_sharpness"] is None
