"""The statistics a record claim needs, in plain Python: Student's t CDF and the one-sided t-test."""
import math

EPS = 1e-16
TINY = 1e-300
MAX_TERMS = 10_000


def _continued_fraction(terms) -> float:
    """1 / (1 + d1 / (1 + d2 / (1 + ...))) for the numerators d1, d2, ... by the modified Lentz method."""
    f = c = 1.0  # value of the tail as a fraction b0 + ..., with b0 = 1
    d = 0.0
    for n, num in enumerate(terms, start=1):
        d = 1.0 + num * d
        d = 1.0 / (d if abs(d) > TINY else TINY)
        c = 1.0 + num / c
        c = c if abs(c) > TINY else TINY
        f *= c * d
        if abs(c * d - 1.0) < EPS:
            return 1.0 / f
        if n > MAX_TERMS:
            break
    raise ArithmeticError("incomplete beta continued fraction did not converge")


def _beta_terms(a: float, b: float, x: float):
    """Numerators of the continued fraction for I_x(a, b): odd terms -(a+m)(a+b+m)x / ((a+2m)(a+2m+1)),
    even terms m(b-m)x / ((a+2m-1)(a+2m))."""
    m = 0
    while True:
        yield -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        m += 1
        yield m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))


def betainc(a: float, b: float, x: float, y: float | None = None) -> float:
    """Regularized incomplete beta I_x(a, b); pass y = 1 - x when it is known more accurately than 1 - x."""
    y = 1.0 - x if y is None else y
    if x <= 0.0:
        return 0.0
    if y <= 0.0:
        return 1.0
    log_front = a * math.log(x) + b * math.log(y) - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))
    # The fraction converges fast only left of the mean of Beta(a, b); right of it use I_x(a,b) = 1 - I_y(b,a).
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _continued_fraction(_beta_terms(a, b, x)) / a
    return 1.0 - math.exp(log_front) * _continued_fraction(_beta_terms(b, a, y)) / b


def student_t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with df degrees of freedom: the tail is I_{df/(df+t^2)}(df/2, 1/2) / 2."""
    if not df > 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    if math.isnan(t):
        return math.nan
    if t == 0.0:
        return 0.5
    r = df / (t * t)  # x = df/(df+t^2) = r/(1+r), 1-x = 1/(1+r): both accurate for tiny and huge |t|
    tail = 0.5 * betainc(df / 2.0, 0.5, r / (1.0 + r), 1.0 / (1.0 + r))
    return tail if t < 0 else 1.0 - tail


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n - 1 in the denominator; None for a single value)."""
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


def one_sided_t_test(values: list[float], target: float) -> tuple[float | None, float | None]:
    """(t, p) for H1: mean < target against H0: mean >= target; p = T_{n-1}.cdf(t), t = (mean-target)/(s/sqrt n).
    Both are None when undefined: fewer than two values, or no spread at all and the mean equal to target."""
    if len(values) < 2:
        return None, None
    mean, std = mean_std(values)
    if std == 0.0:
        if mean == target:
            return None, None
        return (-math.inf, 0.0) if mean < target else (math.inf, 1.0)
    t = (mean - target) / (std / math.sqrt(len(values)))
    return t, student_t_cdf(t, len(values) - 1)
