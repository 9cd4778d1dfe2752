//! Modbus frames, pure: read requests encoded (RTU and TCP), answers
//! checked against the request they must answer.
//!
//! An answer is trusted only when it is the answer to *this* request: the
//! same unit, the same function, the byte count the request asked for and,
//! on RTU, a good CRC; on TCP, the same transaction id. Anything else is a
//! [`Fault`], counted by kind, never a value.

use std::time::Duration;

use crate::config::{LineSettings, RegisterKind};

/// The largest RTU frame (address, PDU of at most 253 bytes, CRC).
pub const MAX_RTU_FRAME: usize = 256;

/// Most registers one read may ask for (Modbus application protocol, 6.3/6.4).
pub const MAX_READ_REGISTERS: u16 = 125;

/// Most coils or discrete inputs one read may ask for (6.1/6.2).
pub const MAX_READ_BITS: u16 = 2000;

/// Time `bytes` characters take on the wire.
pub fn wire_time(line: &LineSettings, bytes: usize) -> Duration {
    let bits = u64::from(line.bits_per_char()) * bytes as u64;
    Duration::from_micros(bits * 1_000_000 / u64::from(line.baud.max(1)))
}

/// The silence that separates two frames: 3.5 character times, and a fixed
/// 1.75 ms above 19,200 baud (Modbus over serial line, 2.5.1.1).
pub fn inter_frame(line: &LineSettings) -> Duration {
    if line.baud > 19_200 {
        Duration::from_micros(1750)
    } else {
        wire_time(line, 7) / 2
    }
}

/// CRC-16/MODBUS (polynomial 0xA001 reflected, initial 0xFFFF), as sent:
/// low byte first.
pub fn crc16(data: &[u8]) -> u16 {
    data.iter().fold(0xFFFF, |crc, &b| {
        (crc >> 8) ^ CRC_TABLE[usize::from((crc as u8) ^ b)]
    })
}

const CRC_TABLE: [u16; 256] = {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u16;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// True when the last two bytes of `frame` are the CRC of the others.
pub fn crc_ok(frame: &[u8]) -> bool {
    match frame.len().checked_sub(2) {
        Some(n) if n > 0 => crc16(&frame[..n]).to_le_bytes() == frame[n..],
        _ => false,
    }
}

/// One read request: `count` registers (or bits) of `kind` from `address`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub unit: u8,
    pub kind: RegisterKind,
    pub address: u16,
    pub count: u16,
}

impl Request {
    /// The function code: 1 coils, 2 discrete inputs, 3 holding, 4 input registers.
    pub fn function(&self) -> u8 {
        match self.kind {
            RegisterKind::Coil => 0x01,
            RegisterKind::Discrete => 0x02,
            RegisterKind::Holding => 0x03,
            RegisterKind::Input => 0x04,
        }
    }

    /// The PDU: function, address, count (big-endian).
    pub fn pdu(&self) -> [u8; 5] {
        let [a0, a1] = self.address.to_be_bytes();
        let [c0, c1] = self.count.to_be_bytes();
        [self.function(), a0, a1, c0, c1]
    }

    /// The RTU frame: unit, PDU, CRC (low byte first).
    pub fn rtu(&self) -> [u8; 8] {
        let p = self.pdu();
        let mut f = [self.unit, p[0], p[1], p[2], p[3], p[4], 0, 0];
        let [lo, hi] = crc16(&f[..6]).to_le_bytes();
        f[6] = lo;
        f[7] = hi;
        f
    }

    /// The TCP frame: MBAP header (transaction id, protocol 0, length,
    /// unit) and the PDU.
    pub fn tcp(&self, transaction: u16) -> [u8; 12] {
        let p = self.pdu();
        let [t0, t1] = transaction.to_be_bytes();
        [t0, t1, 0, 0, 0, 6, self.unit, p[0], p[1], p[2], p[3], p[4]]
    }

    /// Data bytes of a good answer: 2 per register, 1 per 8 bits.
    pub fn data_len(&self) -> usize {
        let n = usize::from(self.count);
        if self.kind.is_bits() {
            n.div_ceil(8)
        } else {
            2 * n
        }
    }

    /// Bytes of a good RTU answer: unit, function, byte count, data, CRC.
    pub fn rtu_answer_len(&self) -> usize {
        5 + self.data_len()
    }
}

/// Why a request gave no value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// No answer (not a byte) within the timeout.
    Timeout,
    /// The device answered with an exception code (2: illegal address, ...).
    Exception(u8),
    /// Bytes that fail their CRC: a garbled frame, or noise.
    BadCrc,
    /// A frame that is not the answer to this request: another unit or
    /// function, a wrong byte count, cut short, or (TCP) a broken header.
    BadFrame(String),
}

impl Fault {
    /// The label it is counted under.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Timeout => "timeout",
            Fault::Exception(_) => "exception",
            Fault::BadCrc => "bad_crc",
            Fault::BadFrame(_) => "bad_frame",
        }
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Timeout => write!(f, "timeout (no answer)"),
            Fault::Exception(code) => write!(f, "exception {code} ({})", exception_name(*code)),
            Fault::BadCrc => write!(f, "bad CRC (a garbled frame)"),
            Fault::BadFrame(why) => write!(f, "bad frame ({why})"),
        }
    }
}

/// The standard exception codes' names.
pub fn exception_name(code: u8) -> &'static str {
    match code {
        1 => "illegal function",
        2 => "illegal data address",
        3 => "illegal data value",
        4 => "server device failure",
        5 => "acknowledge",
        6 => "server device busy",
        8 => "memory parity error",
        10 => "gateway path unavailable",
        11 => "gateway target device failed to respond",
        _ => "unknown code",
    }
}

/// What the bytes received so far after an RTU request amount to.
#[derive(Debug, PartialEq, Eq)]
pub enum RtuCheck<'a> {
    /// The start of the answer: wait for more.
    Incomplete,
    /// The answer: its data bytes.
    Data(&'a [u8]),
    /// A complete frame that gives no value.
    Fault(Fault),
    /// Bytes that cannot start the answer (another unit or function, noise):
    /// read until the line is quiet, then [`classify_unexpected`].
    Unexpected,
}

/// Checks what arrived after `req` was sent (the request itself is not in
/// `buf`). The expected length comes from the request, not from the
/// answer's own byte count, so a garbled count is a bad CRC, not a hang.
pub fn check_rtu<'a>(req: &Request, buf: &'a [u8]) -> RtuCheck<'a> {
    let Some(&unit) = buf.first() else {
        return RtuCheck::Incomplete;
    };
    if unit != req.unit {
        return RtuCheck::Unexpected;
    }
    let Some(&function) = buf.get(1) else {
        return RtuCheck::Incomplete;
    };
    let need = if function == req.function() {
        req.rtu_answer_len()
    } else if function == req.function() | 0x80 {
        5
    } else {
        return RtuCheck::Unexpected;
    };
    if buf.len() < need {
        return RtuCheck::Incomplete;
    }
    let frame = &buf[..need];
    if !crc_ok(frame) {
        return RtuCheck::Fault(Fault::BadCrc);
    }
    if function & 0x80 != 0 {
        return RtuCheck::Fault(Fault::Exception(frame[2]));
    }
    let data = &frame[3..need - 2];
    if usize::from(frame[2]) != data.len() {
        return RtuCheck::Fault(Fault::BadFrame(format!(
            "byte count {} for {} data bytes",
            frame[2],
            data.len()
        )));
    }
    RtuCheck::Data(data)
}

/// Bytes that could not start the answer, once the line went quiet: a
/// CRC-valid frame from someone else is a bad frame, anything else a bad CRC.
pub fn classify_unexpected(req: &Request, buf: &[u8]) -> Fault {
    if buf.len() >= 4 && crc_ok(buf) {
        Fault::BadFrame(format!(
            "a frame from unit {} function {} (asked unit {} function {})",
            buf[0],
            buf[1],
            req.unit,
            req.function()
        ))
    } else {
        Fault::BadCrc
    }
}

/// What the bytes received on a Modbus TCP connection amount to.
#[derive(Debug, PartialEq, Eq)]
pub enum TcpCheck<'a> {
    Incomplete,
    /// The answer's data, and the bytes its frame took.
    Data(&'a [u8], usize),
    /// A frame for another transaction (an answer that came too late):
    /// drop this many bytes and read on.
    Skip(usize),
    /// A frame for this transaction that gives no value, and its length.
    Fault(Fault, usize),
    /// A header that cannot be framed: the stream cannot be trusted any more.
    Desync(String),
}

/// Checks `buf` (the bytes received, oldest first) for the answer to `req`
/// sent with `transaction`.
pub fn check_tcp<'a>(req: &Request, transaction: u16, buf: &'a [u8]) -> TcpCheck<'a> {
    if buf.len() < 7 {
        return TcpCheck::Incomplete;
    }
    let protocol = u16::from_be_bytes([buf[2], buf[3]]);
    let len = usize::from(u16::from_be_bytes([buf[4], buf[5]]));
    if protocol != 0 || !(2..=254).contains(&len) {
        return TcpCheck::Desync(format!("MBAP header protocol {protocol} length {len}"));
    }
    let total = 6 + len;
    if buf.len() < total {
        return TcpCheck::Incomplete;
    }
    if u16::from_be_bytes([buf[0], buf[1]]) != transaction {
        return TcpCheck::Skip(total);
    }
    let frame = &buf[..total];
    let (unit, function) = (frame[6], frame[7]);
    if unit != req.unit {
        return TcpCheck::Fault(
            Fault::BadFrame(format!("unit {unit}, asked {}", req.unit)),
            total,
        );
    }
    if function == req.function() | 0x80 && total == 9 {
        return TcpCheck::Fault(Fault::Exception(frame[8]), total);
    }
    if function != req.function() {
        return TcpCheck::Fault(
            Fault::BadFrame(format!("function {function}, asked {}", req.function())),
            total,
        );
    }
    let data = &frame[9.min(total)..];
    if total < 9 || usize::from(frame[8]) != data.len() || data.len() != req.data_len() {
        return TcpCheck::Fault(
            Fault::BadFrame(format!(
                "{} data bytes, asked {}",
                data.len(),
                req.data_len()
            )),
            total,
        );
    }
    TcpCheck::Data(data, total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn req(kind: RegisterKind, address: u16, count: u16) -> Request {
        Request {
            unit: 1,
            kind,
            address,
            count,
        }
    }

    /// A good RTU answer to `r` with `data`.
    fn answer(r: &Request, data: &[u8]) -> Vec<u8> {
        let mut f = vec![r.unit, r.function(), data.len() as u8];
        f.extend_from_slice(data);
        let crc = crc16(&f);
        f.extend_from_slice(&crc.to_le_bytes());
        f
    }

    #[test]
    fn wire_times_follow_the_baud_and_the_character_size() {
        use crate::config::{FlowControl, Parity};
        let line = |baud, parity| LineSettings {
            baud,
            data_bits: 8,
            parity,
            stop_bits: 1,
            flow_control: FlowControl::None,
        };
        // 9600 8N1: 10 bits a character, 1.0417 ms; 3.5 characters 3.65 ms.
        assert_eq!(wire_time(&line(9600, Parity::None), 1).as_micros(), 1041);
        assert_eq!(inter_frame(&line(9600, Parity::None)).as_micros(), 3645);
        // 8E1: 11 bits.
        assert_eq!(wire_time(&line(9600, Parity::Even), 8).as_micros(), 9166);
        assert_eq!(inter_frame(&line(115_200, Parity::None)).as_micros(), 1750);
    }

    #[test]
    fn requests_match_the_specification_examples() {
        // Modbus over serial line, 6.2.2: read holding 0x006B, 3 registers of
        // slave 0x11 is 11 03 00 6B 00 03 76 87.
        let r = Request {
            unit: 0x11,
            kind: RegisterKind::Holding,
            address: 0x6B,
            count: 3,
        };
        assert_eq!(r.rtu(), [0x11, 0x03, 0x00, 0x6B, 0x00, 0x03, 0x76, 0x87]);
        // Unit 1, read input register 1, one register: 01 04 00 01 00 01 60 0A.
        assert_eq!(
            req(RegisterKind::Input, 1, 1).rtu(),
            [0x01, 0x04, 0x00, 0x01, 0x00, 0x01, 0x60, 0x0A]
        );
        assert_eq!(
            req(RegisterKind::Coil, 0x13, 0x25).tcp(0x0102),
            [1, 2, 0, 0, 0, 6, 1, 0x01, 0x00, 0x13, 0x00, 0x25]
        );
        assert_eq!(req(RegisterKind::Coil, 0, 19).data_len(), 3);
        assert_eq!(req(RegisterKind::Input, 0, 19).data_len(), 38);
    }

    #[test]
    fn an_answer_is_data_only_when_complete_and_sound() {
        let r = req(RegisterKind::Input, 0, 2);
        let a = answer(&r, &[0, 215, 1, 146]);
        for n in 0..a.len() {
            assert_eq!(check_rtu(&r, &a[..n]), RtuCheck::Incomplete, "{n} bytes");
        }
        assert_eq!(check_rtu(&r, &a), RtuCheck::Data(&[0, 215, 1, 146]));
        // Trailing bytes are not part of it.
        let mut longer = a.clone();
        longer.push(0x55);
        assert_eq!(check_rtu(&r, &longer), RtuCheck::Data(&[0, 215, 1, 146]));
    }

    #[test]
    fn exceptions_bad_crcs_and_strangers_are_faults() {
        let r = req(RegisterKind::Holding, 100, 2);
        let mut exc = vec![1, 0x83, 2];
        exc.extend_from_slice(&crc16(&exc).to_le_bytes());
        assert_eq!(check_rtu(&r, &exc), RtuCheck::Fault(Fault::Exception(2)));
        let mut bad = answer(&r, &[1, 2, 3, 4]);
        bad[4] ^= 0x10;
        assert_eq!(check_rtu(&r, &bad), RtuCheck::Fault(Fault::BadCrc));
        // Another unit's answer, whole: a bad frame once the line is quiet.
        let other = Request { unit: 2, ..r };
        let theirs = answer(&other, &[1, 2, 3, 4]);
        assert_eq!(check_rtu(&r, &theirs), RtuCheck::Unexpected);
        assert!(matches!(
            classify_unexpected(&r, &theirs),
            Fault::BadFrame(_)
        ));
        assert_eq!(classify_unexpected(&r, &[0xFF, 0x00]), Fault::BadCrc);
        // Another function's answer (a late coil read) from the same unit.
        let coils = answer(&req(RegisterKind::Coil, 0, 8), &[0x05]);
        assert_eq!(check_rtu(&r, &coils), RtuCheck::Unexpected);
        // The right CRC over a wrong byte count.
        let mut f = vec![1, 3, 2, 1, 2, 3, 4];
        f.extend_from_slice(&crc16(&f).to_le_bytes());
        assert!(matches!(
            check_rtu(&r, &f),
            RtuCheck::Fault(Fault::BadFrame(_))
        ));
    }

    #[test]
    fn tcp_answers_are_matched_by_transaction() {
        let r = req(RegisterKind::Holding, 0, 1);
        let late = [0, 7, 0, 0, 0, 5, 1, 3, 2, 0, 9];
        let mine = [0, 8, 0, 0, 0, 5, 1, 3, 2, 0, 42];
        let mut buf = late.to_vec();
        buf.extend_from_slice(&mine);
        assert_eq!(check_tcp(&r, 8, &buf), TcpCheck::Skip(11));
        assert_eq!(check_tcp(&r, 8, &buf[11..]), TcpCheck::Data(&[0, 42], 11));
        assert_eq!(check_tcp(&r, 8, &mine[..10]), TcpCheck::Incomplete);
        let exc = [0, 8, 0, 0, 0, 3, 1, 0x83, 2];
        assert_eq!(
            check_tcp(&r, 8, &exc),
            TcpCheck::Fault(Fault::Exception(2), 9)
        );
        let broken = [0, 8, 0, 1, 0, 3, 1, 0x83, 2];
        assert!(matches!(check_tcp(&r, 8, &broken), TcpCheck::Desync(_)));
    }

    proptest! {
        /// Any single flipped bit in an answer makes it a fault or leaves it
        /// incomplete, never data (CRC-16 catches every 1-bit error).
        #[test]
        fn one_flipped_bit_is_never_trusted(
            data in proptest::collection::vec(any::<u8>(), 2..=20usize).prop_filter("even", |d| d.len() % 2 == 0),
            bit in any::<proptest::sample::Index>(),
        ) {
            let r = req(RegisterKind::Input, 0, (data.len() / 2) as u16);
            let mut a = answer(&r, &data);
            let i = bit.index(a.len() * 8);
            a[i / 8] ^= 1 << (i % 8);
            prop_assert!(!matches!(check_rtu(&r, &a), RtuCheck::Data(_)));
        }

        /// No input makes the checks panic or read past the buffer.
        #[test]
        fn any_bytes_are_checked_without_panic(
            buf in proptest::collection::vec(any::<u8>(), 0..300usize),
            count in 1u16..=125,
            kind in prop_oneof![Just(RegisterKind::Coil), Just(RegisterKind::Holding)],
        ) {
            let r = req(kind, 0, count);
            let _ = check_rtu(&r, &buf);
            let _ = classify_unexpected(&r, &buf);
            let _ = check_tcp(&r, 1, &buf);
        }

        /// A request's own CRC checks.
        #[test]
        fn requests_carry_a_good_crc(unit in any::<u8>(), address in any::<u16>(), count in any::<u16>()) {
            let r = Request { unit, kind: RegisterKind::Input, address, count };
            prop_assert!(crc_ok(&r.rtu()));
        }
    }
}
