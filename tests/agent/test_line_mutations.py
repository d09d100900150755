"""Likely one-place repairs of a line: the fix is among them, strings and comments are not
touched, the line itself never is one."""

from agent.line_mutations import MAX_CANDIDATES, repairs


def test_an_off_by_one_denominator_is_repaired_first():
    out = repairs("return sum(values) / (len(values) - 1)")
    assert out[0] == "return sum(values) / len(values)"
    assert "return sum(values) // (len(values) - 1)" in out


def test_operators_are_swapped_for_their_usual_confusions():
    assert repairs("return a - b") == ["return a + b"]
    assert set(repairs("if x < n and not done:")) == {
        "if x <= n and not done:", "if x > n and not done:", "if x < n or not done:",
        "if x < n and done:"}
    assert "for i in range(len(xs)):" in repairs("for i in range(len(xs) - 1):")


def test_strings_comments_and_unary_signs_stay():
    out = repairs('return f("a-b") + 1  # x-1')
    assert out == ['return f("a-b")  # x-1', 'return f("a-b") - 1  # x-1']
    assert repairs("total = -x + y") == ["total = -x - y"]
    assert all("(*args)" in c for c in repairs("call(*args)"))  # not a product


def test_a_line_is_never_its_own_repair_and_the_list_is_bounded():
    line = " + ".join(f"f{i}(x)" for i in range(40))
    out = repairs(line)
    assert line not in out and len(out) == MAX_CANDIDATES
    assert repairs("pass") == [] and repairs("") == []
