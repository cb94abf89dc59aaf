"""Speed: the fused conv1 kernel (fused.c, fused), the tutorial's own pipeline as a yardstick (reference), and
`bench`, which runs both side by side."""
