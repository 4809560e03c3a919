"""Losses: plain nn.Modules, no Lightning (design.md "Training")."""
