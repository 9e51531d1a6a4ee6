"""A forward is swapped only where the module runs the reference's code and the new forward agrees on a probe."""

import torch

from tunesmith.models.swap import same_code, swap_forward


class Doubles(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(6))

    def forward(self, x):
        return x * 2


class AlsoDoubles(Doubles):
    def forward(self, x):
        return x * 2


class Triples(Doubles):
    def forward(self, x):
        return x * 3


def _doubled(self, x):
    return x + x


def test_same_code_compares_what_the_code_does_not_where_it_lives():
    assert same_code(AlsoDoubles.forward, Doubles.forward)
    assert not same_code(Triples.forward, Doubles.forward)
    assert not same_code(torch.relu, Doubles.forward)  # no Python code at all


def test_only_modules_with_the_code_and_the_same_output_are_swapped():
    model = torch.nn.Sequential(Doubles(), AlsoDoubles(), Triples())
    assert swap_forward(model, Doubles.forward, _doubled, lambda m: m.weight) == 2
    assert [("forward" in vars(m)) for m in model] == [True, True, False]
    assert swap_forward(Doubles(), Doubles.forward, lambda self, x: x * 2.5, lambda m: m.weight) == 0
