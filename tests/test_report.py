"""The report: the paper's numbers as data, and the side-by-side comparison with ours."""
from pathlib import Path

import pandas as pd
import pytest

from workflow_src import config as qcfg
from workflow_src.reporting import paper as report

ROOT = Path(__file__).resolve().parents[1]


def test_paper_numbers_cover_tables_3_4_and_appendix_b():
    p = report.paper_numbers()
    t4 = p[p["table"] == "4"]
    # Table 4: FP + 4 vanilla PTQ + 4 MA-QAT + 2 LSQ-QAT rows, for each of the three archs
    assert len(t4) == 11 * 3 and set(t4["arch"]) == {"stylegan", "sagan", "cyclegan"}
    assert len(p[p["table"] == "3"]) == 11 and set(p[p["table"] == "3"]["arch"]) == {"stylegan"}
    row = t4[(t4["arch"] == "stylegan") & (t4["method"] == "lsq-qat") & (t4["w_bits"] == 4)].iloc[0]
    assert (row["fid"], row["qfid"], row["per_channel"]) == (33.1, 11.0, False)
    assert set(p["method"]) <= {"fp", "ptq-quantile", "ar-brecq", "ste-brecq", "ma-qat", "lsq-qat"}


def test_comparison_puts_ours_beside_the_paper_with_the_difference():
    cfg = qcfg.load([ROOT / "params.yaml"])
    ours = pd.DataFrame([
        {"arch": "stylegan", "method": "lsq-qat", "per_channel": False, "w_bits": 4, "a_bits": 8, "fid": 30.0, "qfid": 12.5,
         "fid_std": 0.4, "qfid_std": 0.2, "feature_space": "inception-2048d"},
        {"arch": "stylegan", "method": "fp", "per_channel": None, "w_bits": 32, "a_bits": 32, "fid": 25.0, "qfid": 0.0,
         "fid_std": 0.3, "qfid_std": 0.0, "feature_space": "inception-2048d"},
    ])
    cmp = report.paper_comparison(ours, cfg)
    lsq = cmp[(cmp["method"] == "lsq-qat") & (cmp["arch"] == "stylegan") & (cmp["bits"] == "w4a8")].iloc[0]
    assert lsq["paper_qfid"] == 11.0 and lsq["ours_qfid"] == 12.5 and lsq["diff_qfid"] == pytest.approx(1.5)
    assert lsq["diff_fid"] == pytest.approx(30.0 - 33.1)
    missing = cmp[(cmp["method"] == "ma-qat") & (cmp["arch"] == "sagan")]
    assert missing["ours_fid"].isna().all()
    md = report.paper_comparison_md(cmp)
    assert "| Table 4 | StyleGAN | LSQ-QAT | ✗ | w4a8 | 33.10 | 30.00 ± 0.40 | -3.10 | 11.00 | 12.50 ± 0.20 | 1.50 |" in md
    appendix_b = cmp[cmp["table"] == "App. B"]
    assert len(appendix_b) == 2 and appendix_b["ours_qfid"].isna().all()  # our QAT used the perceptual loss
