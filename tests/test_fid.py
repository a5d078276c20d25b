"""FID glue against closed forms and against pytorch-fid's own pipeline."""
import numpy as np
import pytest
import torch
from PIL import Image

from inception_standin import save_random_fid_inception
from workflow_src.quality import fid
from workflow_src.quality.featurenet import TinyFeatureNet


def test_frechet_distance_closed_form_diagonal():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    v1, v2 = rng.uniform(0.5, 2, 5), rng.uniform(0.5, 2, 5)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2))
    got = fid.frechet_distance((mu1, np.diag(v1)), (mu2, np.diag(v2)))
    assert got == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("case", ["full-rank", "rank-deficient", "identical"])
def test_frechet_distance_equals_pytorch_fids(case):
    """Our distance and pytorch-fid's calculate_frechet_distance on the same statistics, including
    covariances from fewer samples than dimensions (the singular product takes the eps fallback or a
    complex root)."""
    from pytorch_fid.fid_score import calculate_frechet_distance

    rng = np.random.default_rng(11)
    dim, n = {"full-rank": (16, 200), "rank-deficient": (64, 20), "identical": (8, 100)}[case]
    a = rng.normal(size=(n, dim)) @ rng.normal(size=(dim, dim))
    b = a if case == "identical" else a * 0.8 + rng.normal(size=(n, dim)) + 0.3
    sa, sb = fid.statistics(a), fid.statistics(b)
    expected = calculate_frechet_distance(sa[0], sa[1], sb[0], sb[1])
    assert fid.frechet_distance(sa, sb) == pytest.approx(expected, rel=1e-6, abs=1e-8)
    if case != "identical":
        assert expected > 1e-3


def test_frechet_distance_from_fewer_samples_than_dimensions_is_exact():
    """8 samples in 2048 dimensions (the paper-smoke evaluations): the covariances are singular,
    where pytorch-fid's ``sqrtm`` needs its eps fallback and is off in the 7th digit.  Closed forms:
    a shifted copy has the same covariance (distance = the shift's squared norm); a doubled copy has
    4x the covariance, so tr((S 4S)^(1/2)) = 2 tr(S) and the distance is |mu|^2 + tr(S).  Both with
    the sample factor on both sides (paired bootstrap) and on one side (against stored statistics)."""
    rng = np.random.default_rng(5)
    a = rng.normal(size=(8, 2048))
    shift = rng.normal(size=2048)
    sa = fid.statistics(a)
    assert sa.factor is not None and fid.statistics(rng.normal(size=(3000, 16))).factor is None
    for b, expected in ((a + shift, float(shift @ shift)), (2 * a, float(sa[0] @ sa[0] + np.trace(sa[1])))):
        sb = fid.statistics(b)
        assert fid.frechet_distance(sa, sb) == pytest.approx(expected, rel=1e-9)          # both factors
        assert fid.frechet_distance(sa, (sb[0], sb[1])) == pytest.approx(expected, rel=1e-9)  # one factor
        assert fid.frechet_distance((sa[0], sa[1]), sb) == pytest.approx(expected, rel=1e-9)


def test_statistics_and_self_distance():
    feats = np.random.default_rng(1).normal(size=(500, 8))
    mu, sigma = fid.statistics(feats)
    assert np.allclose(mu, feats.mean(0)) and np.allclose(sigma, np.cov(feats.T))
    assert fid.frechet_distance((mu, sigma), (mu, sigma)) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError):
        fid.statistics(feats[:1])


def test_stats_file_round_trip_checks_feature_space(tmp_path):
    feats = np.random.default_rng(2).normal(size=(50, 4))
    fid.save_stats(tmp_path / "s.npz", feats, "tinycnn-4d")
    mu, sigma = fid.load_stats(tmp_path / "s.npz", "tinycnn-4d")
    assert np.allclose(mu, feats.mean(0))
    with pytest.raises(ValueError, match="inception"):
        fid.load_stats(tmp_path / "s.npz", "inception-2048d")
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        fid.load_stats(tmp_path / "nope.npz")


def _write_pngs(dirpath, images):
    dirpath.mkdir()
    paths = []
    for i, img in enumerate(images):
        p = dirpath / f"{i:03d}.png"
        Image.fromarray(img).save(p)
        paths.append(str(p))
    return paths


def test_fid_matches_pytorch_fid_pipeline(tmp_path):
    """Same images, same feature network: our FID equals the one pytorch-fid computes from files."""
    from pytorch_fid.fid_score import calculate_activation_statistics, calculate_frechet_distance

    torch.manual_seed(0)
    net = TinyFeatureNet(n_classes=4, input_size=16, width=4, dim=6).eval()
    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, size=(40, 16, 16, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-60, 60, size=a.shape), 0, 255).astype(np.uint8)

    class Wrapped(torch.nn.Module):  # pytorch-fid feeds [0, 1] images and reads output[0]
        def forward(self, x):
            return [net.features(x * 2 - 1)[:, :, None, None]]

    ref = []
    for name, imgs in (("a", a), ("b", b)):
        files = _write_pngs(tmp_path / name, imgs)
        ref.append(calculate_activation_statistics(files, Wrapped(), batch_size=8, dims=6, device="cpu", num_workers=0))
    expected = calculate_frechet_distance(*ref[0], *ref[1])

    space = fid.FeatureSpace("test", 6, net.features)
    to_t = lambda x: torch.from_numpy(x).permute(0, 3, 1, 2).float() / 127.5 - 1
    ours = [fid.statistics(space.extract(to_t(x).split(8))) for x in (a, b)]
    assert fid.frechet_distance(ours[0], ours[1]) == pytest.approx(expected, rel=1e-4)
    assert expected > 0


def test_inception_weights_missing_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="pt_inception"):
        fid.load_feature_space("inception", tmp_path)
    with pytest.raises(ValueError, match="features.kind"):
        fid.load_feature_space("clip", tmp_path)


def test_bootstrap_spread_closed_forms():
    """Paired resampling of features shifted by a constant vector: every resample has the same mean
    shift and covariance, so each Frechet distance is ||delta||^2 and the spread is ~0.  Against
    fixed statistics the spread is positive, shrinks with the sample size, and is seeded."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 8))
    delta = np.linspace(-1, 1, 8)
    assert fid.frechet_distance(fid.statistics(a + delta), fid.statistics(a)) == pytest.approx(float(delta @ delta), rel=1e-6)
    assert fid.bootstrap_std(a + delta, a, 10, seed=1) < 1e-5
    ref = (np.zeros(8), np.eye(8))
    small = fid.bootstrap_std(rng.normal(size=(100, 8)), ref, 30, seed=1)
    large = fid.bootstrap_std(rng.normal(size=(3000, 8)), ref, 30, seed=1)
    assert 0 < large < small
    b = rng.normal(size=(100, 8))
    assert fid.bootstrap_std(b, ref, 5, seed=3) == fid.bootstrap_std(b, ref, 5, seed=3)
    with pytest.raises(ValueError, match="paired"):
        fid.bootstrap_std(b, b[:50], 5, seed=3)


def test_inception_fid_equals_pytorch_fid_cli_on_saved_pngs(tmp_path, random_fid_inception):
    """Our in-memory Inception path (tensors in [-1, 1], batched) and pytorch-fid's own CLI on the
    same images saved as PNGs give the same FID to 1e-3."""
    import os
    import subprocess
    import sys

    rng = np.random.default_rng(5)
    a = rng.integers(0, 256, size=(24, 32, 32, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-90, 90, size=a.shape), 0, 255).astype(np.uint8)
    _write_pngs(tmp_path / "a", a), _write_pngs(tmp_path / "b", b)
    env = dict(os.environ, TORCH_HOME=str(random_fid_inception.parent), PYTHONWARNINGS="ignore")
    hub = random_fid_inception.parent / "hub"
    hub.symlink_to(random_fid_inception, target_is_directory=True)  # torch.hub reads $TORCH_HOME/hub/checkpoints
    proc = subprocess.run([sys.executable, "-m", "pytorch_fid", str(tmp_path / "a"), str(tmp_path / "b"), "--device", "cpu",
                           "--batch-size", "8", "--num-workers", "0"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cli = float(proc.stdout.strip().split()[-1])

    space = fid.load_feature_space("inception", random_fid_inception)
    to_t = lambda x: torch.from_numpy(x).permute(0, 3, 1, 2).float() / 127.5 - 1
    ours = [fid.statistics(space.extract(to_t(x).split(10))) for x in (a, b)]
    assert cli > 1e-2, cli  # a vacuous comparison if the stand-in features were degenerate
    assert fid.frechet_distance(ours[0], ours[1]) == pytest.approx(cli, rel=1e-3, abs=1e-3)


def test_inception_features_equal_pytorch_fid_network(random_fid_inception, monkeypatch):
    """The in-memory feature path (BatchNorm folded, channels_last, resize on [-1, 1]) against
    pytorch-fid's own InceptionV3 forward on the same images in [0, 1], images of two sizes and
    out-of-range values (both clamp)."""
    from pytorch_fid.inception import InceptionV3

    monkeypatch.setenv("TORCH_HOME", str(random_fid_inception.parent))
    hub = random_fid_inception.parent / "hub"
    if not hub.exists():
        hub.symlink_to(random_fid_inception, target_is_directory=True)
    ref = InceptionV3([3]).eval()
    space = fid.load_feature_space("inception", random_fid_inception)
    g = torch.Generator().manual_seed(6)
    for size in (32, 299):
        x = torch.rand(3, 3, size, size, generator=g) * 2.2 - 1.1  # a little outside [-1, 1]
        with torch.no_grad():
            want = ref(((x + 1) / 2).clamp(0, 1))[0].flatten(1).double().numpy()
        got = space.extract([x])
        assert want.std() > 0.05  # features that depend on the image
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())


# ------------------------------------------------------------------ weight files that are not ours
def test_a_crafted_inception_file_is_refused_and_runs_nothing(tmp_path):
    """pytorch-fid reads its weights through torch.hub, which unpickles with weights_only=False: a
    crafted file in the weights directory ran its command.  Ours reads tensors only."""
    from untrusted import write_command_pickle

    marker = tmp_path / "command-ran"
    write_command_pickle(tmp_path / "hub" / "checkpoints" / fid.INCEPTION_FILE, marker, "Conv2d_1a_3x3.conv.weight")
    with pytest.raises(Exception) as e:
        fid.load_feature_space("inception", tmp_path / "hub")
    assert not marker.exists(), "loading the weights ran a command"
    assert isinstance(e.value, RuntimeError) and fid.INCEPTION_FILE in str(e.value), e.value


def _fetch_cfg(section):
    return {"features": {"inception": section}, "perceptual": {"vgg16": section}}


@pytest.mark.parametrize("which", ["inception", "vgg16"])
def test_fetch_checks_the_full_sha256_not_only_the_prefix_in_the_name(tmp_path, monkeypatch, which):
    """The published names carry 8 hex digits of the sha256; a file made to match them (here: a
    published digest that shares the crafted file's prefix) must still be refused, and its command
    never run."""
    import hashlib

    from untrusted import write_command_pickle
    from workflow_src.methods import perceptual
    from workflow_src.workflow import networks as stages

    marker = tmp_path / "command-ran"
    crafted = write_command_pickle(tmp_path / "crafted.pth", marker, "features.0.weight")
    digest = hashlib.sha256(crafted.read_bytes()).hexdigest()
    module, name_attr, sha_attr, stem = ((fid, "INCEPTION_FILE", "INCEPTION_SHA256", "pt_inception-2015-12-05")
                                         if which == "inception" else (perceptual, "VGG16_FILE", "VGG16_SHA256", "vgg16"))
    monkeypatch.setattr(module, name_attr, f"{stem}-{digest[:8]}.pth")
    monkeypatch.setattr(module, sha_attr, digest[:8] + "0" * 56, raising=False)  # the "published" file: same prefix, other content
    fetch = stages.fetch_inception if which == "inception" else stages.fetch_vgg16
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=digest):
        fetch(_fetch_cfg({"path": str(crafted)}), out=str(out))
    assert not [p for p in out.rglob("*") if p.is_file()] if out.exists() else True
    assert not marker.exists()


def test_weights_pinned_by_another_digest_load_with_a_warning_and_are_named_by_it(tmp_path, random_fid_inception):
    """A configured sha256 other than the published file's (the paper-smoke stand-ins) pins that file:
    checked in full, copied with a warning, and its feature space named by the digest so that its
    scores never pass for FIDs; a file that does not match the configured digest is still refused."""
    import hashlib

    from workflow_src.workflow import networks as stages

    src = random_fid_inception / "checkpoints" / fid.INCEPTION_FILE
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    assert digest != fid.INCEPTION_SHA256
    with pytest.warns(UserWarning, match="not the published network"):
        stages.fetch_inception(_fetch_cfg({"path": str(src), "sha256": digest}), out=str(tmp_path / "out"))
    assert fid.load_feature_space("inception", tmp_path / "out").name == f"inception-2048d-sha256-{digest[:12]}"
    wrong = "f" * 64
    with pytest.raises(ValueError, match=wrong), pytest.warns(UserWarning, match=wrong):
        stages.fetch_inception(_fetch_cfg({"path": str(src), "sha256": wrong}), out=str(tmp_path / "out2"))
    assert not (tmp_path / "out2" / "checkpoints" / fid.INCEPTION_FILE).exists()


def test_fetch_inception_downloads_verifies_and_loads(tmp_path, http_server, random_fid_inception, monkeypatch):
    """The download path of the weights: the file is fetched from its URL, checked against the full
    pinned digest (here the stand-in's), and loads; a reply that is not the file is refused."""
    import hashlib
    import shutil

    from workflow_src.workflow import networks as stages

    served = tmp_path / "serve" / "weights.pth"
    served.parent.mkdir()
    shutil.copyfile(random_fid_inception / "checkpoints" / fid.INCEPTION_FILE, served)
    digest = hashlib.sha256(served.read_bytes()).hexdigest()
    monkeypatch.setattr(fid, "INCEPTION_FILE", f"pt_inception-2015-12-05-{digest[:8]}.pth")
    monkeypatch.setattr(fid, "INCEPTION_SHA256", digest, raising=False)
    stages.fetch_inception(_fetch_cfg({"url": http_server.served(served)}), out=str(tmp_path / "out"))
    got = tmp_path / "out" / "checkpoints" / fid.INCEPTION_FILE
    assert got.read_bytes() == served.read_bytes()
    assert fid.load_feature_space("inception", tmp_path / "out").dim == 2048
    page = http_server.url("page", "weights.pth")
    with pytest.raises(ValueError, match=page):
        stages.fetch_inception(_fetch_cfg({"url": page}), out=str(tmp_path / "out2"))
    assert not (tmp_path / "out2" / "checkpoints" / fid.INCEPTION_FILE).exists()


def test_the_tiny_feature_space_folds_batch_norms_and_computes_the_networks_own_features(tmp_path):
    """load_feature_space('tinycnn') runs the network with each batch norm folded into its conv, channels
    last: its features equal the network's own eval-mode forward (PyTorch's batch-norm op with the
    running statistics) to float rounding, and so do the FIDs; a network in training mode is refused."""
    from workflow_src.utils import torch_save

    torch.manual_seed(0)
    hp = {"n_classes": 8, "input_size": 32, "width": 8, "dim": 16}
    net = TinyFeatureNet(**hp)
    with torch.no_grad():  # running statistics and affine parameters far from the identity
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.2, 3), m.weight.uniform_(0.5, 2), m.bias.uniform_(-1, 1)
    torch_save({"hparams": hp, "state_dict": net.state_dict()}, tmp_path / "f.pt")
    space = fid.load_feature_space("tinycnn", tmp_path / "f.pt")
    x = torch.rand(64, 3, 16, 16) * 2 - 1
    y = (0.5 * x + 0.4).flip(-1)  # another distribution
    with torch.no_grad():
        ref = [net.eval().features(v).numpy() for v in (x, y)]
        got = [space.extract(v.split(16)) for v in (x, y)]
    for r, g in zip(ref, got):
        assert np.abs(r).max() > 0.5 and np.allclose(g, r, rtol=0, atol=1e-5), np.abs(g - r).max()
    expected = fid.frechet_distance(fid.statistics(ref[0].astype(np.float64)), fid.statistics(ref[1].astype(np.float64)))
    assert expected > 1e-3, expected
    assert fid.frechet_distance(fid.statistics(got[0]), fid.statistics(got[1])) == pytest.approx(expected, rel=1e-4)
    with pytest.raises(RuntimeError, match="training mode"):
        net.train().feature_extractor()
