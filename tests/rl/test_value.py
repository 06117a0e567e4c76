"""The value function learns a target that depends on the latent, the step and the prompt."""

import torch

from dpok.rl import ValueFunction, prompt_text_feature, value_update


def test_value_function_learns_a_synthetic_target():
    generator = torch.Generator().manual_seed(0)
    n, steps = 512, 5
    latents = torch.randn(n, 4, 4, 4, generator=generator)
    step_indices = torch.randint(steps, (n,), generator=generator)
    prompt_embeds = torch.randn(8, 6, 16, generator=generator)[torch.randint(8, (n,), generator=generator)]
    features = prompt_text_feature(prompt_embeds)
    assert features.shape == (n, 16)
    target = latents[:, 0].mean(dim=(1, 2)) * (step_indices.float() - 2.0) + features[:, 0]

    torch.manual_seed(0)
    value_fn = ValueFunction((4, 4, 4), text_dim=16, num_steps=steps)
    optimizer = torch.optim.AdamW(value_fn.parameters(), lr=3e-3)
    with torch.no_grad():
        initial = torch.mean((value_fn(latents, step_indices, features) - target) ** 2).item()
    for _ in range(300):
        idx = torch.randint(n, (128,), generator=generator)
        value_update(value_fn, optimizer, latents[idx], step_indices[idx], features[idx], target[idx])
    with torch.no_grad():
        prediction = value_fn(latents, step_indices, features)
    final = torch.mean((prediction - target) ** 2).item()
    assert prediction.shape == (n,)
    assert final < initial / 10, (initial, final)
