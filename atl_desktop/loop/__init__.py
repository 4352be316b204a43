"""The loop: the middle floor between the engine packages and the interfaces.

`session` (scoring, queries with the audit sample, the live head, pseudo-labels, label checks),
`rounds` (one round's steps, resumable; the one-open-round rule) and `generative` (the GAN
queries of GAAL and ASAL). The window, `atl` and the simulations drive the engine through it.
"""
