"""Evaluation: NLL in bits/dim (:mod:`.likelihood`), FID/IS (:mod:`.fid`, :mod:`.inception`),
rate–distortion (:mod:`.rate_distortion`) and the generation figures (:mod:`.figures`).

Submodules are imported on use so that ``import ddpm`` stays light.
"""
