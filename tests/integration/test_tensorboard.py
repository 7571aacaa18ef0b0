"""TensorBoard: SB3's keys untouched, sparsity/* scalars, one mask-change image per layer per update, HPARAMS."""

import io

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
