"""The projection head of LoRS/PTM-ST (parameter order matches the published buffers)."""
import torch
import torch.nn as nn


class ProjectionHead(nn.Module):
    """Linear -> GELU -> Linear -> Dropout -> + residual -> LayerNorm."""

    def __init__(self, embedding_dim: int, projection_dim: int, dropout: float = 0.1):
        super().__init__()
        self.projection = nn.Linear(embedding_dim, projection_dim)
        self.gelu = nn.GELU()
        self.fc = nn.Linear(projection_dim, projection_dim)
        self.dropout = nn.Dropout(dropout)
        self.layer_norm = nn.LayerNorm(projection_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        projected = self.projection(x)
        x = self.dropout(self.fc(self.gelu(projected)))
        return self.layer_norm(x + projected)
