"""MinAtar: the paper's network as a sparse-capable features extractor, DQN runs, the suite."""

import pytest

pytest.importorskip("minatar", reason="MinAtar is an optional extra (pip install 'sparse_rl[minatar]')")

import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import torch as th  # noqa: E402
from stable_baselines3 import DQN  # noqa: E402

from sparse_rl.enjoy import main as enjoy_main  # noqa: E402
from sparse_rl.harness.envs import register_optional_envs  # noqa: E402
from sparse_rl.harness.export import export_run, load_exported  # noqa: E402
from sparse_rl.harness.suites import load_suite  # noqa: E402
from sparse_rl.nn import SparseConv2d, SparseLinear  # noqa: E402
from sparse_rl.sb3.builders import sparse_layers  # noqa: E402
from sparse_rl.sb3.minatar import MinAtarCNN  # noqa: E402
from sparse_rl.train import main as train_main  # noqa: E402

register_optional_envs()


def test_the_minatar_network_is_the_papers_and_sparse_but_for_the_head():
    sparse = DQN("SparseMinAtarPolicy", "MinAtar/Breakout-v1", buffer_size=100, policy_kwargs=dict(sparsity=0.9))
    q_net = sparse.policy.q_net
    assert isinstance(q_net.features_extractor, MinAtarCNN)
    conv, hidden = q_net.features_extractor.cnn[0], q_net.features_extractor.linear[0]
    assert isinstance(conv, SparseConv2d) and conv.weight_shape == (16, 4, 3, 3) and conv.stride == (1, 1)
    assert isinstance(hidden, SparseLinear) and (hidden.in_features, hidden.out_features) == (16 * 8 * 8, 128)
    assert isinstance(q_net.q_net[0], th.nn.Linear) and q_net.q_net[0].in_features == 128  # the dense head
    assert set(sparse_layers(sparse.policy)) == {"q_net.features_extractor.cnn.0", "q_net.features_extractor.linear.0"}
    dense = DQN("MinAtarPolicy", "MinAtar/Breakout-v1", buffer_size=100)
    assert isinstance(dense.policy.q_net.features_extractor.cnn[0], th.nn.Conv2d)
    obs = th.as_tensor(sparse.env.reset()).float()
    assert sparse.policy.q_net(obs).shape == dense.policy.q_net(obs).shape == (1, 3)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A dense and a sparse DQN run from configs/dqn.yml (``dqn/MinAtar-Breakout-v1_1`` and ``_2``)."""
    root = tmp_path_factory.mktemp("minatar")
    for sparsity in ("0", "0.9"):
        assert train_main(["--algo", "dqn", "--env", "MinAtar/Breakout-v1", "--sparsity", sparsity, "-n", "700",
                           "-f", str(root), "--eval-freq", "350", "--eval-episodes", "1", "-v", "0",
                           "-params", "learning_starts:200", "callback:[{sparse_rl.sb3.TopologyCallback: "
                           "{method: rigl, update_every: 250, end: 0.8}}]"]) == 0
    return root


def test_dqn_minatar_dense_and_sparse_runs_from_the_config(runs):
    dense = DQN.load(runs / "dqn" / "MinAtar-Breakout-v1_1" / "MinAtar-Breakout-v1.zip")
    sparse = DQN.load(runs / "dqn" / "MinAtar-Breakout-v1_2" / "MinAtar-Breakout-v1.zip")
    assert type(dense.policy).__name__ == "MinAtarPolicy" and type(sparse.policy).__name__ == "SparseMinAtarPolicy"
    assert isinstance(sparse.policy.q_net.features_extractor.linear[0], SparseLinear)
    assert sparse.policy.topology_state["updater"]["last_update_step"] == 450  # start 200 (learning_starts) + 250
    assert type(sparse.policy.optimizer).__name__ == "RMSprop"


def test_a_minatar_run_exports_and_replays_with_ours_and_rl_zoos_enjoy(runs, tmp_path, capsys):
    """The export refused the MinAtar network; replay read the saved env_kwargs string as a dict; RL Zoo's enjoy
    knew no MinAtar ids under ``--gym-packages sparse_rl.sb3`` and could not read env_kwargs saved as a string."""
    run_dir = runs / "dqn" / "MinAtar-Breakout-v1_2"
    policy = load_exported(export_run(run_dir, tmp_path / "export"))
    model = DQN.load(run_dir / "MinAtar-Breakout-v1.zip")
    frames = np.stack([model.observation_space.sample() for _ in range(8)])  # (8, 10, 10, 4) bool, channels last
    np.testing.assert_array_equal(policy.predict(frames)[0], model.predict(frames, deterministic=True)[0])
    assert enjoy_main([str(run_dir), "--episodes", "1", "-n", "200"]) == 0
    capsys.readouterr()
    pytest.importorskip("rl_zoo3")
    out = subprocess.run([sys.executable, "-m", "rl_zoo3.enjoy", "--algo", "dqn", "--env", "MinAtar/Breakout-v1", "-f",
                          str(runs), "--exp-id", "2", "-n", "200", "--no-render", "--gym-packages", "sparse_rl.sb3"],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]


def test_minatar_suite():
    suite = load_suite("minatar")
    assert len(suite.tasks) == 5 and suite.task_of("MinAtar/Breakout-v1") == "MinAtar/Breakout-v1"
    assert suite.protocol["episodes"] == 10


def test_enjoy_writes_a_minatar_video_and_refuses_what_it_cannot_write(runs, tmp_path, capsys):
    """MinAtar renders 10x10 float frames: the writer crashed on them; an unwritable path printed "video: ..." with no
    file; a missing folder silently wrote nothing."""
    import cv2

    run_dir = str(runs / "dqn" / "MinAtar-Breakout-v1_2")
    video = tmp_path / "new" / "breakout.mp4"
    with warnings.catch_warnings():  # gymnasium's checker warned twice about frames the writer handles
        warnings.simplefilter("error")
        assert enjoy_main([run_dir, "--episodes", "1", "-n", "60", "--video", str(video)]) == 0
    capture = cv2.VideoCapture(str(video))
    ok, frame = capture.read()
    assert ok and frame.shape == (160, 160, 3) and frame.max() > 0  # 10 x 10 scaled by 16
    capsys.readouterr()
    assert enjoy_main([run_dir, "--episodes", "1", "-n", "20", "--video", str(tmp_path / "breakout.gif")]) == 2
    err = capsys.readouterr().err  # before OpenCV is asked (it printed its FFmpeg errors first)
    assert err == f"error: --video {tmp_path / 'breakout.gif'}: videos are written as MP4 (mp4v codec); give a .mp4 path\n"
    assert not (tmp_path / "breakout.gif").exists()
