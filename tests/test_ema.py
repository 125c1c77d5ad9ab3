"""EMA over a list of tensors: ema = decay * ema + (1 - decay) * current, and its state round trip."""
import torch

from distill_utils.method.ema import EMA


def test_ema_arithmetic():
    values = [torch.tensor([1.0, 2.0]), torch.tensor(3.0)]
    ema = EMA(values, decay=0.9)
    ema.update([torch.tensor([11.0, 2.0]), torch.tensor(-7.0)])
    ema.update([torch.tensor([11.0, 2.0]), torch.tensor(-7.0)])
    # 1 -> 0.9*1 + 0.1*11 = 2.0 -> 0.9*2 + 0.1*11 = 2.9 ; 3 -> 2.0 -> 1.1
    assert torch.allclose(ema.shadow[0], torch.tensor([2.9, 2.0])) and torch.allclose(ema.shadow[1], torch.tensor(1.1))


def test_the_shadow_is_a_copy_and_the_state_round_trips():
    live = [torch.tensor([1.0, -1.0])]
    ema = EMA(live, decay=0.5)
    live[0].add_(10.0)  # changing the live tensor leaves the average alone until the next update
    assert ema.shadow[0].tolist() == [1.0, -1.0]
    ema.update(live)
    restored = EMA([torch.zeros(2)], decay=0.0)
    restored.load_state_dict(ema.state_dict())
    ema.update(live)
    restored.update(live)
    assert restored.decay == 0.5 and torch.equal(restored.shadow[0], ema.shadow[0])
    assert ema.shadow[0].tolist() == [8.5, 6.5]  # 1 -> 6 -> 8.5 ; -1 -> 4 -> 6.5
