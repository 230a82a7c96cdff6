"""Token samplers for the models over discrete visual tokens, in one place.

  logits.py          logit processors (temperature, top-k, top-p, classifier-free guidance)
                     and `sample`, every knob a traced value
  autoregressive.py  one token at a time in raster order over a model's cached step
                     (NUWA, CogVideo), given tokens copied instead of sampled
  maskgit.py         iterative parallel decoding under a cosine schedule (Phenaki)
  lopar.py           local parallel autoregressive rounds over a priority map (CogView2)

Each decoder is a `lax` loop whose knobs (temperature, top_k, top_p, guidance, steps, rounds) are
traced, so a jitted generation compiles once for all of their values.
"""
