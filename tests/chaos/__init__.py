"""The adversarial ("chaos") suite: kill -9 storms, frozen workers, Redis faults, foreign
garbage, misbehaving nodes, script limits and data loss, each asserting the exact end state."""
