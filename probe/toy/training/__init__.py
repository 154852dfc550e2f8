"""Training the toy Stable Diffusion from scratch (:mod:`probe.toy.training.train`): its settings,
stages (category judge, contrastive text encoder, VAE, latent pool, UNet), the loop they share,
and what a bigger latent costs (:mod:`probe.toy.training.sizes`)."""
