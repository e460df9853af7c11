"""The GAN step, written once for K >= 1 members.

Every tensor has a leading K axis (K = 1 for a lone run): real (K, n_critic, B, ...), z (K, n_critic + 1,
B, latent), the optional labels y_real (K, n_critic, B) and y_fake (K, n_critic + 1, B), and whatever
random numbers the loss drew (loss.draw). `nets` runs G and D over that axis and updates each member from
the sum of the members' losses, which gives each member exactly its own gradient: plain modules for one
member (plain.py), stacked parameters under torch.func for many (stacked.py).
"""
import torch

STATS = ("d_loss", "g_loss", "d_x", "d_g_z")  # what a step returns per member, in this order
BATCH_KEYS = ("real", "z", "y_real", "y_fake", "augment")  # the rest of a step's inputs are the loss's draws


def make_step(nets, loss, augment=None, *, n_critic: int = 1, joint_d_pass: bool = False, precision: str = "fp32"):
    """One GAN step as a closure: step(inputs, r1=True) -> stats (K, 4) on the device, no host sync.

    augment (components/augment.py) changes what D sees: each real and fake batch of a D update and the
    fake batch of the G update gets its own draws, inputs["augment"] (K, 2 n_critic + 1, B, ...); D's
    penalties see D through it too. joint_d_pass runs D once over [real; fake]: the same maths summed in
    another order (weights differ from two passes by float rounding only); never for a D with BatchNorm,
    whose statistics would mix. r1=False leaves out the R1 penalty on this step (lazy R1: see losses.py).
    """
    # no cast cache: a CUDA graph capture cannot hold one, and these nets reuse no weight within a pass
    autocast = lambda: torch.autocast(nets.device.type, dtype=torch.bfloat16, enabled=precision == "bf16",
                                      cache_enabled=False)
    joint_d_pass = joint_d_pass and not nets.batch_statistics
    at = lambda y, k: None if y is None else y[:, k]
    full = lambda logits: logits.float() if logits.dtype in (torch.bfloat16, torch.float16) else logits  # fp64 stays

    def step(inputs: dict[str, torch.Tensor], r1: bool = True) -> torch.Tensor:
        real, z, y_real, y_fake, draws_of = (inputs.get(key) for key in BATCH_KEYS)
        # what D sees of images x: the j-th augmentation of this step (real 2k, fake 2k + 1, G's fake 2 n_critic)
        seen = (lambda x, j: x) if augment is None or not augment.active else (lambda x, j: augment(x, draws_of[:, j]))
        for k in range(n_critic):
            # ---------------------------------------------------------------- #
            # (1) update D: push D(x) up and D(G(z)) down. G is held fixed, so
            #     its forward pass builds no graph and D's backward stops at fake.
            # ---------------------------------------------------------------- #
            x, y, y_f = real[:, k], at(y_real, k), at(y_fake, k)  # (K, B, ...), (K, B), (K, B)
            with torch.no_grad(), autocast():
                fake = nets.G(z[:, k], y_f)
            with autocast():
                x_seen, fake_seen = seen(x, 2 * k), seen(fake.to(x.dtype), 2 * k + 1)
                if joint_d_pass:
                    both_y = None if y is None else torch.cat([y, y_f], dim=1)
                    real_logits, fake_logits = full(nets.D(torch.cat([x_seen, fake_seen], dim=1), both_y)).chunk(2, dim=1)
                else:
                    real_logits, fake_logits = full(nets.D(x_seen, y)), full(nets.D(fake_seen, y_f))  # (K, B), (K, B)
                d_loss = loss.d_loss(real_logits, fake_logits)  # (K,)
                draws = {name: value[:, k] for name, value in inputs.items() if name not in BATCH_KEYS}
                D_seen = lambda images, labels: nets.D(seen(images, 2 * k), labels)
                penalty = loss.penalty(D_seen, x, fake, y, y_f, draws, r1)
            nets.update_d(d_loss if penalty is None else d_loss + penalty)

        # ---------------------------------------------------------------- #
        # (2) update G on fresh noise. Only G's parameters are differentiated:
        #     D's weights stay as they are and get no gradients.
        # ---------------------------------------------------------------- #
        y_g = at(y_fake, n_critic)
        with autocast():
            g_loss = loss.g_loss(full(nets.D(seen(nets.G(z[:, n_critic], y_g), 2 * n_critic), y_g)))
        nets.update_g(g_loss)
        nets.update_ema()

        # D(x) and D(G(z)) as probabilities, from the last D update (before it), as the reference logs them
        return torch.stack([d_loss.detach(), g_loss.detach(), real_logits.detach().sigmoid().mean(1),
                            fake_logits.detach().sigmoid().mean(1)], dim=1)

    return step
