"""The speaker students: a ResNet with squeeze-and-excitation blocks on log-mel filterbanks, attentive statistics
pooling and an FC embedding (voxceleb_trainer's ResNetSE34V2, the paper's student, and a small one for CPUs)."""

from __future__ import annotations

import torch
from torch import nn

from benchmark.nets import Student
from benchmark.registry import STUDENTS
from benchmark.types import StudentOut


class SEBasicBlock(nn.Module):
    """BasicBlock with squeeze-and-excitation (voxceleb_trainer ResNetSE34V2)."""

    def __init__(self, cin: int, cout: int, stride: int, reduction: int = 8):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.se = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(cout, max(1, cout // reduction), 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(max(1, cout // reduction), cout, 1),
            nn.Sigmoid(),
        )
        self.down = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x):
        h = self.body(x)
        return torch.relu(h * self.se(h) + self.down(x))


class Fbank(nn.Module):
    """40-dim log mel filterbank, 25 ms window, 10 ms hop at 16 kHz, pre-emphasis, instance norm."""

    def __init__(self, n_mels: int = 40):
        super().__init__()
        import torchaudio

        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=16000, n_fft=512, win_length=400, hop_length=160, window_fn=torch.hamming_window, n_mels=n_mels
        )
        self.norm = nn.InstanceNorm1d(n_mels)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        with torch.autocast(wave.device.type, enabled=False):
            wave = wave.float()
            wave = torch.cat([wave[:, :1], wave[:, 1:] - 0.97 * wave[:, :-1]], dim=1)
            return self.norm(torch.log(self.mel(wave) + 1e-6))


class SpeakerStudent(Student):
    """ResNet with SE blocks on log-mel filterbanks, attentive statistics pooling and an FC embedding."""

    channels_last = False  # torch 2.14 CPU backward crashes (double free) on this net in channels_last

    def __init__(self, layers: list[int], widths: list[int], n_out: int, num_classes: int, n_mels: int = 40):
        stem = nn.Sequential(
            Fbank(n_mels),
            _Unsqueeze(),
            nn.Conv2d(1, widths[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        stages, cin = [], widths[0]
        for i, (n, w) in enumerate(zip(layers, widths)):
            blocks = [SEBasicBlock(cin if j == 0 else w, w, (1 if i == 0 else 2) if j == 0 else 1) for j in range(n)]
            stages.append(nn.Sequential(*blocks))
            cin = w
        super().__init__(stem, stages, list(widths), num_classes)
        feat = widths[-1] * (n_mels // 8)
        self.attention = nn.Sequential(
            nn.Conv1d(feat, 128, 1), nn.ReLU(inplace=True), nn.BatchNorm1d(128), nn.Conv1d(128, feat, 1), nn.Softmax(dim=2)
        )
        self.fc = nn.Linear(2 * feat, n_out)
        self.embed_dim = n_out
        self.classifier = nn.Linear(n_out, num_classes)

    def forward(self, wave: torch.Tensor) -> StudentOut:
        maps = self.run_stages(wave)
        h = maps[-1]
        x = h.reshape(h.shape[0], -1, h.shape[-1])  # [B, C*F, T]
        w = self.attention(x)
        mu = (x * w).sum(2)
        sg = torch.sqrt((((x**2) * w).sum(2) - mu**2).clamp(min=1e-5))
        emb = self.fc(torch.cat([mu, sg], dim=1))
        return StudentOut(maps=maps, embedding=emb, logits=self.classifier(emb), classifier=self.classifier)


class _Unsqueeze(nn.Module):
    def forward(self, x):
        return x.unsqueeze(1)


STUDENTS.add(
    "resnet34_asp",
    lambda k: SpeakerStudent([3, 4, 6, 3], [32, 64, 128, 256], 512, k),
    "speaker: ResNetSE34V2 (half-width ResNet34, SE, ASP, 512-d) on 40-d log-mel fbanks, the paper's student",
)
STUDENTS.add(
    "resnet_asp_small",
    lambda k: SpeakerStudent([1, 1, 1, 1], [8, 16, 32, 64], 128, k),
    "speaker: 4-stage ResNet8 with SE and ASP, widths 8-64, 128-d (trains on 2 CPU cores)",
)
