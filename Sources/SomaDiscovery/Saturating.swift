// Arithmetic on numbers that came from outside (record timestamps, stored scores, measured
// rates, configured durations): it saturates instead of trapping (STYLE "Numbers from outside").

extension UInt64 {
    /// `self + other`, or `UInt64.max` when that overflows.
    func saturatingAdd(_ other: UInt64) -> UInt64 {
        let (v, overflow) = addingReportingOverflow(other)
        return overflow ? .max : v
    }

    /// `self - other`, or 0 when `other` is larger.
    func saturatingSub(_ other: UInt64) -> UInt64 {
        let (v, overflow) = subtractingReportingOverflow(other)
        return overflow ? 0 : v
    }

    /// `self * other`, or `UInt64.max` when that overflows.
    func saturatingMul(_ other: UInt64) -> UInt64 {
        let (v, overflow) = multipliedReportingOverflow(by: other)
        return overflow ? .max : v
    }

    /// A measured or reported rate as a whole number: NaN, negative and -inf are 0, anything at
    /// or above 2^64 (+inf too) is `UInt64.max`. (`UInt64(Double)` traps on all of them.)
    init(saturating d: Double) {
        if !(d > 0) {
            self = 0
        } else if d >= 18_446_744_073_709_551_616.0 {
            self = .max
        } else {
            self = UInt64(d)
        }
    }
}

extension UInt32 {
    /// A duration in seconds as whole milliseconds, clamped to 0...UInt32.max (NaN: 0).
    init(millisecondsOf seconds: Double) {
        let ms = seconds * 1_000
        if !(ms > 0) {
            self = 0
        } else if ms >= 4_294_967_295.0 {
            self = .max
        } else {
            self = UInt32(ms)
        }
    }
}

extension Duration {
    /// Whole milliseconds, 0 for negative durations, `UInt64.max` beyond that.
    var milliseconds: UInt64 {
        let c = components
        guard c.seconds >= 0, c.attoseconds >= 0 else { return 0 }
        return UInt64(c.seconds).saturatingMul(1_000).saturatingAdd(UInt64(c.attoseconds / 1_000_000_000_000_000))
    }

    /// In seconds, as a `Double`.
    var inSeconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}

/// An exponentially weighted mean of round trips (70 % the old, 30 % the new), computed wide so
/// that no stored or measured value can overflow; 0 means "not measured".
func smoothedLatency(old: UInt32, new: UInt32) -> UInt32 {
    guard old != 0 else { return new }
    return UInt32((UInt64(old) * 7 + UInt64(new) * 3) / 10)
}
