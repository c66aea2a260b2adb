"""The Distral maths, pure JAX: variants, losses, networks, learning and acting.

Nothing here imports Reverb, TensorFlow or Ray (tests/test_layout.py checks it), so the
same functions serve `distral train`'s single jitted program and the distributed learner.
"""
