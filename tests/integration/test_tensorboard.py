"""TensorBoard: SB3's keys untouched, sparsity/* scalars, one mask-change image per layer per update, HPARAMS."""

import io
import json

import numpy as np
from PIL import Image as PILImage
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator as PluginAccumulator

from sparse_rl.sb3.tensorboard import COLOURS, mask_change_image
from sparse_rl.train import main as train_main

from .conftest import sac_pendulum_config


def test_mask_change_image_colours_and_downsampling():
    import torch as th

    old = th.tensor([[1, 1, 0, 0]], dtype=th.bool)
    new = th.tensor([[1, 0, 1, 0]], dtype=th.bool)
    image = mask_change_image(old, new)
    assert image.shape == (1, 4, 3) and image.dtype == np.uint8
    assert [tuple(c) for c in image[0]] == [tuple(COLOURS[1]), tuple(COLOURS[2]), tuple(COLOURS[3]), tuple(COLOURS[0])]
    big_old, big_new = th.zeros(3136, 512, dtype=th.bool), th.zeros(3136, 512, dtype=th.bool)
    big_new[100, 7] = True
    small = mask_change_image(big_old, big_new, max_side=256)
    assert max(small.shape[:2]) <= 256 and (small.reshape(-1, 3) == COLOURS[3]).all(axis=1).sum() == 1


def test_training_writes_sparsity_scalars_images_and_hparams(tmp_path):
    conf = sac_pendulum_config(tmp_path / "sac.yml", 400, end=1.0, buffer_size=1000)
    for sparsity in ("0.9", "0"):
        assert train_main(["--algo", "sac", "--env", "Pendulum-v1", "-conf", str(conf), "--sparsity", sparsity,
                           "-f", str(tmp_path / "logs"), "-tb", str(tmp_path / "tb"), "--eval-freq", "200",
                           "--eval-episodes", "1", "-v", "0"]) == 0
    sparse_dir, dense_dir = tmp_path / "tb" / "sac_Pendulum-v1_set90_s0", tmp_path / "tb" / "sac_Pendulum-v1_dense_s0"
    events = EventAccumulator(str(sparse_dir), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"eval/mean_reward", "train/critic_loss", "train/actor_loss"} <= scalars
    assert {"sparsity/density", "sparsity/density_actor", "sparsity/density_critic", "sparsity/updates",
            "sparsity/drop_fraction", "sparsity/changed_fraction", "sparsity/ever_active_fraction",
            "sparsity/inference_flops_vs_dense", "sparsity/training_flops_vs_dense"} <= scalars
    assert [e.step for e in events.Scalars("sparsity/updates")][-3:] == [200, 300, 400]
    assert 0.09 < events.Scalars("sparsity/inference_flops_vs_dense")[-1].value < 0.2
    images = events.Tags()["images"]
    assert "sparsity_masks/critic.qf0.2" in images and "sparsity_masks/actor.latent_pi.0" in images
    picture = events.Images("sparsity_masks/critic.qf0.2")
    assert [e.step for e in picture] == [200, 300, 400]
    pixels = np.asarray(PILImage.open(io.BytesIO(picture[0].encoded_image_string)).convert("RGB")).reshape(-1, 3)
    for colour in COLOURS:  # pruned, grown, kept active, kept inactive all appear
        assert (pixels == colour).all(axis=1).any()
    for run_dir in (sparse_dir, dense_dir):
        plugin = PluginAccumulator(str(run_dir))
        plugin.Reload()
        assert "_hparams_/session_start_info" in plugin.PluginTagToContent("hparams")


def test_dense_and_sparse_runs_compare_in_one_tensorboard_folder(tmp_path):
    """Runs were named Pendulum-v1_1_1 / _2_1, dense runs logged no sparsity/* scalars, thin mask images were a few
    pixels wide and there was no comparison layout."""
    from tensorboard.plugins.custom_scalar import layout_pb2

    conf = sac_pendulum_config(tmp_path / "sac.yml", 400, method="rigl", end=1.0, buffer_size=1000)
    for sparsity in ("0.9", "0"):
        assert train_main(["--algo", "sac", "--env", "Pendulum-v1", "-conf", str(conf), "--sparsity", sparsity,
                           "-f", str(tmp_path / "logs"), "-tb", str(tmp_path / "tb"), "--eval-freq", "200",
                           "--eval-episodes", "1", "-v", "0"]) == 0
    assert sorted(p.name for p in (tmp_path / "tb").iterdir()) == ["sac_Pendulum-v1_dense_s0", "sac_Pendulum-v1_rigl90_s0"]
    names = {json.loads(p.read_text())["name"] for p in (tmp_path / "logs").rglob("run.json")}
    assert names == {"sac_Pendulum-v1_dense_s0", "sac_Pendulum-v1_rigl90_s0"}
    overlaid = {"eval/mean_reward", "time/steps_per_second", "sparsity/density", "sparsity/nnz", "sparsity/params",
                "sparsity/training_flops_vs_dense", "sparsity/inference_flops_vs_dense", "sparsity/ever_active_fraction",
                "dormant/actor_tau0", "dormant/actor_tau0.1", "dormant/critic_tau0.1"}
    values = {}
    for name in ("dense", "rigl90"):
        events = EventAccumulator(str(tmp_path / "tb" / f"sac_Pendulum-v1_{name}_s0"),
                                  size_guidance={"scalars": 0, "images": 0, "histograms": 0})
        events.Reload()
        assert overlaid <= set(events.Tags()["scalars"]), overlaid - set(events.Tags()["scalars"])
        assert "sparsity/weight_magnitude" in events.Tags()["histograms"]
        assert {200, 400} <= {e.step for e in events.Scalars("sparsity/density")}  # on the evaluation grid
        values[name] = {tag: events.Scalars(tag)[-1].value for tag in ("sparsity/density", "sparsity/training_flops_vs_dense",
                                                                       "sparsity/ever_active_fraction")}
        plugin = PluginAccumulator(str(tmp_path / "tb" / f"sac_Pendulum-v1_{name}_s0"))
        plugin.Reload()
        layout = layout_pb2.Layout()
        layout.ParseFromString(plugin.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
        charts = {chart.title: list(chart.multiline.tag) for category in layout.category for chart in category.chart}
        assert layout.category[0].title == "dense vs sparse"
        assert {"evaluation return", "training FLOPs vs dense", "density", "dormant fraction (tau 0.1)",
                "steps per second"} <= set(charts)
        if name == "rigl90":
            image = events.Images("sparsity_masks/actor.latent_pi.0")[0]  # a 256 x 3 layer: scaled x8
            assert (image.height, image.width) == (2048, 24)
            description = events.SummaryMetadata("sparsity_masks/actor.latent_pi.0").summary_description
            assert "red: newly pruned" in description and "scaled x8" in description
    assert values["dense"] == {"sparsity/density": 1.0, "sparsity/training_flops_vs_dense": 1.0,
                               "sparsity/ever_active_fraction": 1.0}
    assert values["rigl90"]["sparsity/density"] < 0.2 and values["rigl90"]["sparsity/training_flops_vs_dense"] < 0.3
    assert 0.1 < values["rigl90"]["sparsity/ever_active_fraction"] < 1.0


def test_comparison_scalars_at_the_start_and_at_a_final_evaluation_off_the_grid(tmp_path):
    """The comparison scalars were recorded on the evaluation grid only: a run ending off the grid had none at its
    final evaluation (and no steps/s), and the starting values were written at the first dump's step."""
    conf = sac_pendulum_config(tmp_path / "sac.yml", 300, method="rigl", end=1.0, buffer_size=1000)
    assert train_main(["--algo", "sac", "--env", "Pendulum-v1", "-conf", str(conf), "--sparsity", "0",
                       "-f", str(tmp_path / "logs"), "-tb", str(tmp_path / "tb"), "--eval-freq", "200",
                       "--eval-episodes", "1", "-v", "0"]) == 0
    events = EventAccumulator(str(tmp_path / "tb" / "sac_Pendulum-v1_dense_s0"), size_guidance={"scalars": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("sparsity/density")] == [0, 200, 300]
    assert [e.step for e in events.Scalars("eval/mean_reward")] == [200, 300]
    assert [e.step for e in events.Scalars("time/steps_per_second")] == [200, 300]


def test_run_json_names_the_tensorboard_run_it_wrote(tmp_path):
    """A second run with the same name got TensorBoard run ``..._s0_2`` while its run.json said ``..._s0``."""
    for folder in ("a", "b"):
        assert train_main(["--algo", "sac", "--env", "Pendulum-v1", "-n", "100", "-params", "learning_starts:50",
                           "-f", str(tmp_path / folder), "-tb", str(tmp_path / "tb"), "--eval-freq", "-1",
                           "-v", "0"]) == 0
    names = [json.loads(next((tmp_path / f).rglob("run.json")).read_text())["name"] for f in ("a", "b")]
    assert names == ["sac_Pendulum-v1_rigl90_s0", "sac_Pendulum-v1_rigl90_s0_2"]
    assert sorted(p.name for p in (tmp_path / "tb").iterdir()) == names


def test_trained_parameters_leave_the_target_networks_out():
    """sparsity/params counted DQN's and SAC's target copies (twice the trained weights) beside an nnz that did not."""
    from stable_baselines3 import DQN

    from sparse_rl.sb3.comparison import trained_parameters

    model = DQN("MlpPolicy", "CartPole-v1", buffer_size=100, policy_kwargs=dict(net_arch=[8]))
    assert trained_parameters(model.policy) == sum(p.numel() for p in model.policy.q_net.parameters()) == 4 * 8 + 8 + 8 * 2 + 2
