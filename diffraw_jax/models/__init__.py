"""Flax models: the conditional U-Net f(m_t, w, c, t) and the colour network G."""
