"""Pure arithmetic on layers: fans, gains, schemes. No torch, no I/O."""
