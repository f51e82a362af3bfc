"""The SimCLR paper's ablation studies (Chen et al. 2020) as one-command scripts; see docs/studies.md."""
