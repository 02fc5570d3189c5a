"""The method contract, checked for every registered method (a new method is covered with no edit here):
finite scalar or per-sample terms, gradients reach the student and the method's own parameters and never
the teacher, every hyperparameter reachable by --set, d_S != d_T and d_S == d_T, state through a checkpoint."""

import io
from dataclasses import dataclass, fields

import pytest
import torch

from benchmark.method import Hparams, Method
from benchmark.plugins import load_plugins
from benchmark.registry import METHODS
from benchmark.resolve import split_sets
from benchmark.types import Dims, TeacherOut, Term

load_plugins()
B, K = 8, 5


def _teacher_net(name: str = "resnet8"):
    from benchmark.nets import student_builder

    torch.manual_seed(1)
    return student_builder(name)(K).eval()  # a map teacher (resnet8: 3 stages of 32/64/128 channels)


def _batch(d_t: int, seed: int = 0, maps: bool | str = False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 3, 32, 32, generator=g)
    y = torch.arange(B) % K
    t_maps = None
    if maps:
        with torch.no_grad():
            t_maps = _teacher_net(maps if isinstance(maps, str) else "resnet8")(x).maps
    teacher = TeacherOut(torch.randn(B, d_t, generator=g) * 2, torch.randn(B, K, generator=g), t_maps)
    return x, y, teacher


def _set_value(f, value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def check_contract(name: str, d_t: int, student_name: str = "resnet8_w16", maps: bool | str = False) -> None:
    """maps: the teacher gives its stage maps (an image teacher: resnet8, or the architecture named); otherwise it
    is an embedding (text, faces), and a method that needs maps must refuse in one UsageError at construction."""
    from benchmark.nets import student_builder
    from benchmark.registry import UsageError

    cls = METHODS.get(name)
    torch.manual_seed(0)
    student = student_builder(student_name)(K)
    shape = lambda ms: [tuple(m.shape[1:]) for m in ms]  # noqa: E731
    probe = torch.zeros(1, 3, 32, 32)
    with torch.no_grad():
        s_shapes = shape(student.eval()(probe).maps) if maps else []
        t_shapes = shape(_teacher_net(maps if isinstance(maps, str) else "resnet8")(probe).maps) if maps else []
    student.train()
    dims = Dims(
        student.embed_dim,
        d_t,
        K,
        list(student.map_channels),
        map_shapes=s_shapes,
        teacher_map_shapes=t_shapes,
        train_size=4 * B,
        total_steps=10,
        train_labels=torch.arange(4 * B) % K,
    )
    if not maps and cls.needs_teacher_maps(cls.Hparams()):
        with pytest.raises(UsageError, match="stage maps"):
            cls(dims, cls.Hparams())
        return
    method = cls(dims, cls.Hparams())
    kw = {"index": torch.arange(B)} if cls.wants_index else {}
    x, y, teacher = _batch(d_t, maps=maps)
    frozen = (teacher.embedding.clone(), teacher.logits.clone())
    params = [*student.parameters(), *method.parameters()]
    assert all(p is not teacher.embedding for p in params), "the teacher must not be a parameter"
    opt = torch.optim.SGD(params, lr=0.01)

    s = student(x)
    terms = method.terms(s, teacher, y, **kw)
    assert isinstance(terms, dict) and all(isinstance(t, Term) for t in terms.values()), (
        f"{name}: terms() must return named Terms"
    )
    for k, t in terms.items():
        assert t.value.shape in ((), (B,)), f"{name}.{k}: a batch scalar or a per-sample [B] vector, got {tuple(t.value.shape)}"
        assert torch.isfinite(t.value).all(), f"{name}.{k} is not finite"
    loss = torch.nn.functional.cross_entropy(s.logits, y) * method.ce_weight + sum(t.weighted_mean() for t in terms.values())
    opt.zero_grad()
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters()), (
        f"{name}: no gradient reaches the student"
    )
    for pname, p in method.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{name}: its parameter {pname} gets no gradient"
    assert teacher.embedding.grad is None and teacher.logits.grad is None
    opt.step()
    method.post_step()
    assert torch.equal(teacher.embedding, frozen[0]) and torch.equal(teacher.logits, frozen[1]), f"{name} changed the teacher"

    # state through a checkpoint: a fresh instance loaded from it computes the same terms
    buf = io.BytesIO()
    torch.save(method.state_dict(), buf)
    buf.seek(0)
    again = cls(dims, cls.Hparams())
    again.load_state_dict(torch.load(buf))
    method.eval(), again.eval(), student.eval()
    x2, y2, t2 = _batch(d_t, seed=1, maps=maps)
    with torch.no_grad():
        s2 = student(x2)
        a, b = method.terms(s2, t2, y2, **kw), again.terms(s2, t2, y2, **kw)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].value, b[k].value, atol=1e-6), f"{name}.{k} differs after a checkpoint round trip"

    # every hyperparameter can be given with --set and arrives with its type
    for f in fields(cls.Hparams):
        value = getattr(cls.Hparams(), f.name)
        _, hp = split_sets({f.name: _set_value(f, value)}, [name])
        assert f.name in hp and hp[f.name] == value and type(hp[f.name]) is type(value), f"{name}: --set {f.name}"


@pytest.mark.parametrize("name", METHODS.names())
def test_a_torchvision_student_by_name_keeps_the_contract(name):
    """tv:resnet18, unmodified but for its classifier: F_S and the stage maps come from forward hooks."""
    check_contract(name, 48, "tv:resnet18")


@pytest.mark.parametrize("name", METHODS.names())
def test_a_timm_student_by_name_keeps_the_contract(name):
    """timm:test_resnet (timm's own tiny test model, 0.37M parameters): F_S its pre-logits feature, the stage
    maps from timm's forward_intermediates."""
    check_contract(name, 48, "timm:test_resnet")


def test_a_timm_student_exposes_its_stages_and_bad_names_are_one_line():
    from benchmark.nets import student_builder
    from benchmark.registry import UsageError

    s = student_builder("timm:test_resnet")(K)
    out = s(torch.randn(2, 3, 32, 32))
    assert out.embedding.shape == (2, s.embed_dim) and out.logits.shape == (2, K)
    assert [m.shape[1] for m in out.maps] == s.map_channels and len(out.maps) == 4
    assert torch.allclose(out.logits, s.classifier(out.embedding), atol=1e-5)  # F_S is the classifier's input
    assert s.weights.startswith("random initialisation")
    with pytest.raises(UsageError, match="timm has no model 'test_resnett'; did you mean 'test_resnet'"):
        student_builder("timm:test_resnett")(K)


def test_a_torchvision_student_exposes_hooked_features():
    from benchmark.nets import student_builder
    from benchmark.registry import UsageError

    s = student_builder("tv:resnet18")(K)
    out = s(torch.randn(2, 3, 32, 32))
    assert out.embedding.shape == (2, 512) and out.logits.shape == (2, K)
    assert [m.shape[1] for m in out.maps] == s.map_channels == [64, 128, 256, 512]
    assert torch.allclose(out.logits, s.classifier(out.embedding), atol=1e-5)  # F_S is the classifier's input
    m = student_builder("tv:mobilenet_v3_small")(K)
    assert m.layers == ["features"] and m(torch.randn(2, 3, 32, 32)).embedding.shape[1] == m.embed_dim
    picked = student_builder("tv:resnet18@layer2,layer3")(K)
    assert picked.map_channels == [128, 256]
    for bad, needle in (("tv:nosuchnet", "no classification model"), ("tv:resnet18@layer9", "no layer named layer9")):
        with pytest.raises(UsageError, match=needle):
            student_builder(bad)(K)


@pytest.mark.parametrize("maps", [False, True], ids=["vector-teacher", "map-teacher"])
@pytest.mark.parametrize("d_t", [48, 64], ids=["dS!=dT", "dS==dT"])
@pytest.mark.parametrize("name", METHODS.names())
def test_every_registered_method_keeps_the_contract(name, d_t, maps):
    check_contract(name, d_t, maps=maps)  # resnet8_w16: d_S = 64; the map teacher: resnet8 (32/64/128 channels)


@pytest.mark.parametrize("name", METHODS.names())
def test_a_torchvision_student_keeps_the_contract_with_a_map_teacher(name):
    check_contract(name, 48, "tv:resnet18", maps="tv:resnet18")  # hooked maps on both sides (4 stages each)


@dataclass
class ToyHparams(Hparams):
    toy_weight: float = 0.5
    toy_flag: bool = False


class Toy(Method):
    """A method written by a newcomer: a linear map of F_S regressed on E_T."""

    Hparams = ToyHparams

    def __init__(self, dims, hp):
        super().__init__(dims, hp)
        self.map = torch.nn.Linear(dims.student, dims.teacher)

    def terms(self, s, t, y):
        return {"toy": Term(((self.map(s.embedding) - t.embedding) ** 2).mean(1), self.hp.toy_weight)}


class BrokenToy(Toy):
    def terms(self, s, t, y):  # per-sample-per-dimension: breaks the [B] / scalar contract
        return {"toy": Term((self.map(s.embedding) - t.embedding) ** 2)}


@pytest.fixture
def registered():
    added = []

    def add(name, cls):
        METHODS.add(name, cls, "test method registered at runtime")
        cls.name = name
        added.append(name)

    yield add
    for name in added:
        METHODS._entries.pop(name)


def test_a_method_registered_at_runtime_is_covered_and_a_broken_one_fails(registered):
    registered("toy_runtime", Toy)
    assert "toy_runtime" in METHODS.names()
    for d_t in (48, 64):
        check_contract("toy_runtime", d_t)
    registered("toy_broken", BrokenToy)
    with pytest.raises(AssertionError, match="per-sample"):
        check_contract("toy_broken", 48)
