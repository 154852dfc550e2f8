"""Training the toy Stable Diffusion from scratch (:mod:`probe.toy.training.train`): its settings,
stages (category judge, contrastive text encoder, VAE, latent pool, UNet), the loop they share,
and what a bigger latent costs (:mod:`probe.toy.training.sizes`); and the toy Flux
(:mod:`probe.toy.training.flux_train`: settings and architecture in ``flux_config``, the T5 and
rectified-flow transformer stages in ``flux_stages``) on toy-v2's frozen CLIP and VAE."""
