//! INQUIRY data: the standard page (SPC-4 6.6.2) and the vital product
//! data pages a direct-access LU offers (SPC-4 7.8, SBC-3 6.6).

use crate::codec::{ascii_trimmed, be16, be32, be64, pad4, put_ascii_padded, u8_at, PutBe};
use crate::error::{need, DecodeError};

/// PERIPHERAL DEVICE TYPE.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct PeripheralType(pub u8);

impl PeripheralType {
    pub const DIRECT_ACCESS: PeripheralType = PeripheralType(0x00);
    pub const STORAGE_ARRAY_CONTROLLER: PeripheralType = PeripheralType(0x0c);
    pub const ENCLOSURE_SERVICES: PeripheralType = PeripheralType(0x0d);
    pub const WELL_KNOWN_LU: PeripheralType = PeripheralType(0x1e);
    pub const UNKNOWN: PeripheralType = PeripheralType(0x1f);
}

/// PERIPHERAL QUALIFIER 000b: the LU is connected.
pub const QUALIFIER_CONNECTED: u8 = 0x0;
/// PERIPHERAL QUALIFIER 011b: no LU behind this LUN.
pub const QUALIFIER_NOT_CAPABLE: u8 = 0x3;

/// VERSION 06h: the device claims SPC-4.
pub const VERSION_SPC4: u8 = 0x06;

// Version descriptors (SPC-4 table 147) a direct-access iSCSI LU claims.
pub const VERSION_DESCRIPTOR_SAM5: u16 = 0x00a0;
pub const VERSION_DESCRIPTOR_SPC4: u16 = 0x0460;
pub const VERSION_DESCRIPTOR_SBC3: u16 = 0x04c0;
pub const VERSION_DESCRIPTOR_ISCSI: u16 = 0x0960;

/// Length of the standard INQUIRY data we build: through the reserved
/// bytes after the eight version descriptors (SPC-4 table 139).
const STANDARD_INQUIRY_LEN: usize = 96;
/// Minimum standard INQUIRY length SPC-4 requires of every device.
const STANDARD_INQUIRY_MIN: usize = 36;

/// Standard INQUIRY data.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct StandardInquiry {
    pub qualifier: u8,
    pub device_type: PeripheralType,
    pub removable: bool,
    pub version: u8,
    pub hisup: bool,
    pub response_data_format: u8,
    pub sccs: bool,
    /// TPGS: 0 no ALUA, 1 implicit, 2 explicit, 3 both.
    pub tpgs: u8,
    pub three_pc: bool,
    pub protect: bool,
    pub encserv: bool,
    pub multip: bool,
    pub cmdque: bool,
    pub vendor: String,
    pub product: String,
    pub revision: String,
    pub version_descriptors: Vec<u16>,
}

impl StandardInquiry {
    pub fn build(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(STANDARD_INQUIRY_LEN);
        v.push((self.qualifier << 5) | (self.device_type.0 & 0x1f));
        v.push(u8::from(self.removable) << 7);
        v.push(self.version);
        v.push((u8::from(self.hisup) << 4) | (self.response_data_format & 0x0f));
        v.push((STANDARD_INQUIRY_LEN - 5) as u8);
        v.push(
            (u8::from(self.sccs) << 7)
                | ((self.tpgs & 0x03) << 4)
                | (u8::from(self.three_pc) << 3)
                | u8::from(self.protect),
        );
        v.push((u8::from(self.encserv) << 6) | (u8::from(self.multip) << 4));
        v.push(u8::from(self.cmdque) << 1);
        put_ascii_padded(&mut v, &self.vendor, 8);
        put_ascii_padded(&mut v, &self.product, 16);
        put_ascii_padded(&mut v, &self.revision, 4);
        v.put_zeros(58 - v.len());
        for i in 0..8 {
            v.put_u16(self.version_descriptors.get(i).copied().unwrap_or(0));
        }
        v.resize(STANDARD_INQUIRY_LEN, 0);
        v
    }

    /// Lenient about length: fields beyond what the target sent are left
    /// empty, but at least the first five bytes must be present.
    pub fn parse(b: &[u8]) -> Result<StandardInquiry, DecodeError> {
        need(b, 5)?;
        let end = b.len().min(5 + usize::from(b[4]));
        let field = |from: usize, to: usize| -> String {
            b.get(from..to.min(end))
                .map(ascii_trimmed)
                .unwrap_or_default()
        };
        let byte = |at: usize| if at < end { b[at] } else { 0 };
        let version_descriptors = (0..8)
            .filter_map(|i| {
                let at = 58 + 2 * i;
                if at + 2 <= end {
                    be16(b, at)
                } else {
                    None
                }
            })
            .filter(|&d| d != 0)
            .collect();
        Ok(StandardInquiry {
            qualifier: b[0] >> 5,
            device_type: PeripheralType(b[0] & 0x1f),
            removable: b[1] & 0x80 != 0,
            version: b[2],
            hisup: b[3] & 0x10 != 0,
            response_data_format: b[3] & 0x0f,
            sccs: byte(5) & 0x80 != 0,
            tpgs: (byte(5) >> 4) & 0x03,
            three_pc: byte(5) & 0x08 != 0,
            protect: byte(5) & 0x01 != 0,
            encserv: byte(6) & 0x40 != 0,
            multip: byte(6) & 0x10 != 0,
            cmdque: byte(7) & 0x02 != 0,
            vendor: field(8, 16),
            product: field(16, 32),
            revision: field(32, 36),
            version_descriptors,
        })
    }

    /// True when at least the SPC minimum of 36 bytes was parsed from.
    pub fn is_complete(b: &[u8]) -> bool {
        b.len() >= STANDARD_INQUIRY_MIN
    }
}

/// VPD page codes a direct-access LU offers.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct VpdPage(pub u8);

impl VpdPage {
    pub const SUPPORTED_VPD_PAGES: VpdPage = VpdPage(0x00);
    pub const UNIT_SERIAL_NUMBER: VpdPage = VpdPage(0x80);
    pub const DEVICE_IDENTIFICATION: VpdPage = VpdPage(0x83);
    pub const BLOCK_LIMITS: VpdPage = VpdPage(0xb0);
    pub const BLOCK_DEVICE_CHARACTERISTICS: VpdPage = VpdPage(0xb1);
    pub const LOGICAL_BLOCK_PROVISIONING: VpdPage = VpdPage(0xb2);
}

/// Wrap a VPD page body with its 4-byte header.
pub fn vpd_page(pq_type: u8, page: VpdPage, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + body.len());
    v.push(pq_type);
    v.push(page.0);
    v.put_u16(body.len() as u16);
    v.extend_from_slice(body);
    v
}

/// Check a VPD header and return the page body (bounded by PAGE LENGTH and
/// by what was received).
fn vpd_body(b: &[u8], page: VpdPage) -> Result<&[u8], DecodeError> {
    need(b, 4)?;
    if b[1] != page.0 {
        return Err(DecodeError::Invalid("VPD page code"));
    }
    let end = b.len().min(4 + usize::from(be16(b, 2).unwrap_or(0)));
    Ok(&b[4..end])
}

/// SUPPORTED VPD PAGES (page 00h).
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct SupportedVpdPages {
    pub pages: Vec<u8>,
}

impl SupportedVpdPages {
    pub fn build(&self, pq_type: u8) -> Vec<u8> {
        vpd_page(pq_type, VpdPage::SUPPORTED_VPD_PAGES, &self.pages)
    }

    pub fn parse(b: &[u8]) -> Result<SupportedVpdPages, DecodeError> {
        Ok(SupportedVpdPages {
            pages: vpd_body(b, VpdPage::SUPPORTED_VPD_PAGES)?.to_vec(),
        })
    }
}

/// UNIT SERIAL NUMBER (page 80h).
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct UnitSerialNumber {
    pub serial: String,
}

impl UnitSerialNumber {
    pub fn build(&self, pq_type: u8) -> Vec<u8> {
        let mut body = Vec::with_capacity(self.serial.len());
        put_ascii_padded(&mut body, &self.serial, self.serial.len());
        vpd_page(pq_type, VpdPage::UNIT_SERIAL_NUMBER, &body)
    }

    pub fn parse(b: &[u8]) -> Result<UnitSerialNumber, DecodeError> {
        let body = vpd_body(b, VpdPage::UNIT_SERIAL_NUMBER)?;
        // Some targets left-pad with spaces.
        Ok(UnitSerialNumber {
            serial: ascii_trimmed(body).trim_start().to_string(),
        })
    }
}

/// CODE SET of a designation descriptor.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct CodeSet(pub u8);

impl CodeSet {
    pub const BINARY: CodeSet = CodeSet(0x1);
    pub const ASCII: CodeSet = CodeSet(0x2);
    pub const UTF8: CodeSet = CodeSet(0x3);
}

/// ASSOCIATION of a designation descriptor.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct Association(pub u8);

impl Association {
    pub const LOGICAL_UNIT: Association = Association(0x0);
    pub const TARGET_PORT: Association = Association(0x1);
    pub const TARGET_DEVICE: Association = Association(0x2);
}

/// DESIGNATOR TYPE of a designation descriptor.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct DesignatorType(pub u8);

impl DesignatorType {
    pub const VENDOR_SPECIFIC: DesignatorType = DesignatorType(0x0);
    pub const T10_VENDOR_ID: DesignatorType = DesignatorType(0x1);
    pub const EUI64: DesignatorType = DesignatorType(0x2);
    pub const NAA: DesignatorType = DesignatorType(0x3);
    pub const RELATIVE_TARGET_PORT: DesignatorType = DesignatorType(0x4);
    pub const TARGET_PORT_GROUP: DesignatorType = DesignatorType(0x5);
    pub const LOGICAL_UNIT_GROUP: DesignatorType = DesignatorType(0x6);
    pub const MD5_LU_IDENTIFIER: DesignatorType = DesignatorType(0x7);
    pub const SCSI_NAME_STRING: DesignatorType = DesignatorType(0x8);
}

/// One designation descriptor of the DEVICE IDENTIFICATION page.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Designator {
    /// PROTOCOL IDENTIFIER, present when PIV is set.
    pub protocol: Option<u8>,
    pub code_set: CodeSet,
    pub association: Association,
    pub designator_type: DesignatorType,
    pub value: Vec<u8>,
}

impl Designator {
    /// NAA IEEE Registered Extended (NAA 6h): the 16-byte LU name.
    pub fn naa(id: [u8; 16]) -> Designator {
        Designator {
            protocol: None,
            code_set: CodeSet::BINARY,
            association: Association::LOGICAL_UNIT,
            designator_type: DesignatorType::NAA,
            value: id.to_vec(),
        }
    }

    /// SCSI name string designator in iSCSI form, NUL terminated and padded
    /// to a multiple of four bytes (SPC-4 7.8.6.11).
    pub fn iscsi_name(association: Association, name: &str) -> Designator {
        let mut value = name.as_bytes().to_vec();
        value.resize(pad4(name.len() + 1), 0);
        Designator {
            protocol: Some(crate::pr::PROTOCOL_ID_ISCSI),
            code_set: CodeSet::UTF8,
            association,
            designator_type: DesignatorType::SCSI_NAME_STRING,
            value,
        }
    }

    pub fn relative_target_port(rtp: u16) -> Designator {
        let [hi, lo] = rtp.to_be_bytes();
        Designator {
            protocol: Some(crate::pr::PROTOCOL_ID_ISCSI),
            code_set: CodeSet::BINARY,
            association: Association::TARGET_PORT,
            designator_type: DesignatorType::RELATIVE_TARGET_PORT,
            value: vec![0, 0, hi, lo],
        }
    }

    pub fn target_port_group(id: u16) -> Designator {
        let [hi, lo] = id.to_be_bytes();
        Designator {
            protocol: Some(crate::pr::PROTOCOL_ID_ISCSI),
            code_set: CodeSet::BINARY,
            association: Association::TARGET_PORT,
            designator_type: DesignatorType::TARGET_PORT_GROUP,
            value: vec![0, 0, hi, lo],
        }
    }

    /// The value as text, for SCSI name strings and ASCII designators.
    pub fn text(&self) -> String {
        ascii_trimmed(&self.value)
    }

    /// The 16-bit value of a relative target port or target port group
    /// designator.
    pub fn port_number(&self) -> Option<u16> {
        be16(&self.value, 2)
    }
}

/// DEVICE IDENTIFICATION (page 83h).
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct DeviceIdentification {
    pub designators: Vec<Designator>,
}

impl DeviceIdentification {
    pub fn build(&self, pq_type: u8) -> Vec<u8> {
        let mut body = Vec::new();
        for d in &self.designators {
            body.push((d.protocol.unwrap_or(0) << 4) | (d.code_set.0 & 0x0f));
            body.push(
                (u8::from(d.protocol.is_some()) << 7)
                    | ((d.association.0 & 0x03) << 4)
                    | (d.designator_type.0 & 0x0f),
            );
            body.push(0);
            body.push(d.value.len().min(255) as u8);
            body.extend_from_slice(&d.value[..d.value.len().min(255)]);
        }
        vpd_page(pq_type, VpdPage::DEVICE_IDENTIFICATION, &body)
    }

    /// Lenient: a designator cut short by the allocation length is dropped.
    pub fn parse(b: &[u8]) -> Result<DeviceIdentification, DecodeError> {
        let body = vpd_body(b, VpdPage::DEVICE_IDENTIFICATION)?;
        let mut designators = Vec::new();
        let mut at = 0;
        while at + 4 <= body.len() {
            let len = usize::from(body[at + 3]);
            let Some(value) = body.get(at + 4..at + 4 + len) else {
                break;
            };
            let piv = body[at + 1] & 0x80 != 0;
            designators.push(Designator {
                protocol: piv.then_some(body[at] >> 4),
                code_set: CodeSet(body[at] & 0x0f),
                association: Association((body[at + 1] >> 4) & 0x03),
                designator_type: DesignatorType(body[at + 1] & 0x0f),
                value: value.to_vec(),
            });
            at += 4 + len;
        }
        Ok(DeviceIdentification { designators })
    }

    fn find(&self, assoc: Association, ty: DesignatorType) -> Option<&Designator> {
        self.designators
            .iter()
            .find(|d| d.association == assoc && d.designator_type == ty)
    }

    /// The LU's NAA name: what multipath layers group paths by (WWID).
    pub fn lu_naa(&self) -> Option<&[u8]> {
        self.find(Association::LOGICAL_UNIT, DesignatorType::NAA)
            .map(|d| d.value.as_slice())
    }

    pub fn relative_target_port(&self) -> Option<u16> {
        self.find(
            Association::TARGET_PORT,
            DesignatorType::RELATIVE_TARGET_PORT,
        )
        .and_then(Designator::port_number)
    }

    pub fn target_port_group(&self) -> Option<u16> {
        self.find(Association::TARGET_PORT, DesignatorType::TARGET_PORT_GROUP)
            .and_then(Designator::port_number)
    }

    /// Target port name, e.g. "iqn...,t,0x0001".
    pub fn target_port_name(&self) -> Option<String> {
        self.find(Association::TARGET_PORT, DesignatorType::SCSI_NAME_STRING)
            .map(Designator::text)
    }

    /// Target device name, e.g. "iqn...".
    pub fn target_name(&self) -> Option<String> {
        self.find(Association::TARGET_DEVICE, DesignatorType::SCSI_NAME_STRING)
            .map(Designator::text)
    }
}

/// Page length of the SBC-3 Block Limits page.
const BLOCK_LIMITS_PAGE_LEN: usize = 0x3c;

/// BLOCK LIMITS (page B0h, SBC-3 6.6.3).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct BlockLimits {
    /// WRITE SAME with NUMBER OF LOGICAL BLOCKS zero is not supported.
    pub wsnz: bool,
    pub max_compare_and_write: u8,
    pub optimal_transfer_granularity: u16,
    pub max_transfer: u32,
    pub optimal_transfer: u32,
    pub max_prefetch: u32,
    pub max_unmap_lba_count: u32,
    pub max_unmap_descriptors: u32,
    pub optimal_unmap_granularity: u32,
    /// UNMAP GRANULARITY ALIGNMENT when UGAVALID is set.
    pub unmap_granularity_alignment: Option<u32>,
    pub max_write_same: u64,
}

impl BlockLimits {
    pub fn build(&self, pq_type: u8) -> Vec<u8> {
        let mut body = Vec::with_capacity(BLOCK_LIMITS_PAGE_LEN);
        body.push(u8::from(self.wsnz));
        body.push(self.max_compare_and_write);
        body.put_u16(self.optimal_transfer_granularity);
        body.put_u32(self.max_transfer);
        body.put_u32(self.optimal_transfer);
        body.put_u32(self.max_prefetch);
        body.put_u32(self.max_unmap_lba_count);
        body.put_u32(self.max_unmap_descriptors);
        body.put_u32(self.optimal_unmap_granularity);
        body.put_u32(
            self.unmap_granularity_alignment
                .map_or(0, |a| 0x8000_0000 | (a & 0x7fff_ffff)),
        );
        body.put_u64(self.max_write_same);
        body.resize(BLOCK_LIMITS_PAGE_LEN, 0);
        vpd_page(pq_type, VpdPage::BLOCK_LIMITS, &body)
    }

    /// Fields missing from a short (SBC-2 style) page read as zero.
    pub fn parse(b: &[u8]) -> Result<BlockLimits, DecodeError> {
        let p = vpd_body(b, VpdPage::BLOCK_LIMITS)?;
        let u32_at = |at: usize| be32(p, at).unwrap_or(0);
        let uga = u32_at(28);
        Ok(BlockLimits {
            wsnz: u8_at(p, 0).unwrap_or(0) & 0x01 != 0,
            max_compare_and_write: u8_at(p, 1).unwrap_or(0),
            optimal_transfer_granularity: be16(p, 2).unwrap_or(0),
            max_transfer: u32_at(4),
            optimal_transfer: u32_at(8),
            max_prefetch: u32_at(12),
            max_unmap_lba_count: u32_at(16),
            max_unmap_descriptors: u32_at(20),
            optimal_unmap_granularity: u32_at(24),
            unmap_granularity_alignment: (uga & 0x8000_0000 != 0).then_some(uga & 0x7fff_ffff),
            max_write_same: be64(p, 32).unwrap_or(0),
        })
    }
}

/// MEDIUM ROTATION RATE 0001h: a non-rotating medium (solid state).
pub const NON_ROTATING_MEDIUM: u16 = 0x0001;

/// BLOCK DEVICE CHARACTERISTICS (page B1h, SBC-3 6.6.2).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct BlockDeviceCharacteristics {
    pub rotation_rate: u16,
    pub form_factor: u8,
}

impl BlockDeviceCharacteristics {
    pub fn build(&self, pq_type: u8) -> Vec<u8> {
        let mut body = Vec::with_capacity(0x3c);
        body.put_u16(self.rotation_rate);
        body.push(0);
        body.push(self.form_factor & 0x0f);
        body.resize(0x3c, 0);
        vpd_page(pq_type, VpdPage::BLOCK_DEVICE_CHARACTERISTICS, &body)
    }

    pub fn parse(b: &[u8]) -> Result<BlockDeviceCharacteristics, DecodeError> {
        let p = vpd_body(b, VpdPage::BLOCK_DEVICE_CHARACTERISTICS)?;
        Ok(BlockDeviceCharacteristics {
            rotation_rate: be16(p, 0).unwrap_or(0),
            form_factor: u8_at(p, 3).unwrap_or(0) & 0x0f,
        })
    }
}

/// PROVISIONING TYPE 010b: thin provisioned.
pub const PROVISIONING_TYPE_THIN: u8 = 0x2;

/// LOGICAL BLOCK PROVISIONING (page B2h, SBC-3 6.6.4).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct LogicalBlockProvisioning {
    pub threshold_exponent: u8,
    /// UNMAP is supported.
    pub lbpu: bool,
    /// WRITE SAME(16) with UNMAP is supported.
    pub lbpws: bool,
    /// WRITE SAME(10) with UNMAP is supported.
    pub lbpws10: bool,
    /// Unmapped blocks read as zeroes.
    pub lbprz: bool,
    pub anc_sup: bool,
    pub dp: bool,
    pub provisioning_type: u8,
}

impl LogicalBlockProvisioning {
    pub fn build(&self, pq_type: u8) -> Vec<u8> {
        let body = [
            self.threshold_exponent,
            (u8::from(self.lbpu) << 7)
                | (u8::from(self.lbpws) << 6)
                | (u8::from(self.lbpws10) << 5)
                | (u8::from(self.lbprz) << 2)
                | (u8::from(self.anc_sup) << 1)
                | u8::from(self.dp),
            self.provisioning_type & 0x07,
            0,
        ];
        vpd_page(pq_type, VpdPage::LOGICAL_BLOCK_PROVISIONING, &body)
    }

    pub fn parse(b: &[u8]) -> Result<LogicalBlockProvisioning, DecodeError> {
        let p = vpd_body(b, VpdPage::LOGICAL_BLOCK_PROVISIONING)?;
        need(p, 3)?;
        Ok(LogicalBlockProvisioning {
            threshold_exponent: p[0],
            lbpu: p[1] & 0x80 != 0,
            lbpws: p[1] & 0x40 != 0,
            lbpws10: p[1] & 0x20 != 0,
            lbprz: p[1] & 0x1c != 0,
            anc_sup: p[1] & 0x02 != 0,
            dp: p[1] & 0x01 != 0,
            provisioning_type: p[2] & 0x07,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn standard_inquiry_fixture() {
        let inq = StandardInquiry {
            version: VERSION_SPC4,
            hisup: true,
            response_data_format: 2,
            tpgs: 1,
            multip: true,
            cmdque: true,
            vendor: "MPATH".into(),
            product: "DISK".into(),
            revision: "0001".into(),
            version_descriptors: vec![VERSION_DESCRIPTOR_SBC3],
            ..Default::default()
        };
        let b = inq.build();
        assert_eq!(b.len(), 96);
        assert_eq!(&b[..8], &[0x00, 0x00, 0x06, 0x12, 91, 0x10, 0x10, 0x02]);
        assert_eq!(&b[8..36], b"MPATH   DISK            0001");
        assert_eq!(&b[58..60], &[0x04, 0xc0]);
        assert_eq!(StandardInquiry::parse(&b), Ok(inq.clone()));
        // Truncated by ALLOCATION LENGTH: still decodes what is there.
        let t = StandardInquiry::parse(&b[..12]).unwrap();
        assert_eq!(t.vendor, "MPAT");
        assert!(StandardInquiry::parse(&b[..3]).is_err());
    }

    /// A VPD 0x83 page as our target serves it on relative port 2.
    #[test]
    fn device_identification_fixture() {
        let mut naa = [0u8; 16];
        naa[0] = 0x60;
        naa[15] = 0x01;
        let di = DeviceIdentification {
            designators: vec![
                Designator::naa(naa),
                Designator::iscsi_name(Association::TARGET_PORT, "iqn.t,t,0x0002"),
                Designator::relative_target_port(2),
                Designator::target_port_group(7),
                Designator::iscsi_name(Association::TARGET_DEVICE, "iqn.t"),
            ],
        };
        let b = di.build(0x00);
        #[rustfmt::skip]
        let expect: Vec<u8> = [
            &[0x00, 0x83, 0x00, 68][..],
            &[0x01, 0x03, 0x00, 16, 0x60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01],
            &[0x53, 0x98, 0x00, 16], b"iqn.t,t,0x0002", &[0, 0],
            &[0x51, 0x94, 0x00, 4, 0, 0, 0, 2],
            &[0x51, 0x95, 0x00, 4, 0, 0, 0, 7],
            &[0x53, 0xa8, 0x00, 8], b"iqn.t", &[0, 0, 0],
        ]
        .concat();
        assert_eq!(b, expect);
        let p = DeviceIdentification::parse(&b).unwrap();
        assert_eq!(p, di);
        assert_eq!(p.lu_naa(), Some(&naa[..]));
        assert_eq!(p.relative_target_port(), Some(2));
        assert_eq!(p.target_port_group(), Some(7));
        assert_eq!(p.target_port_name().as_deref(), Some("iqn.t,t,0x0002"));
        assert_eq!(p.target_name().as_deref(), Some("iqn.t"));
    }

    #[test]
    fn block_limits_fixture() {
        let bl = BlockLimits {
            max_compare_and_write: 255,
            max_transfer: 0x10000,
            optimal_transfer: 0x800,
            max_unmap_lba_count: 0x100000,
            max_unmap_descriptors: 2048,
            optimal_unmap_granularity: 1,
            ..Default::default()
        };
        let b = bl.build(0);
        assert_eq!(b.len(), 64);
        assert_eq!(&b[..6], &[0x00, 0xb0, 0x00, 0x3c, 0x00, 0xff]);
        assert_eq!(BlockLimits::parse(&b), Ok(bl));
        let lbp = LogicalBlockProvisioning {
            lbpu: true,
            lbpws: true,
            lbpws10: true,
            lbprz: true,
            provisioning_type: PROVISIONING_TYPE_THIN,
            ..Default::default()
        };
        assert_eq!(
            lbp.build(0),
            [0x00, 0xb2, 0x00, 0x04, 0x00, 0xe4, 0x02, 0x00]
        );
        assert_eq!(LogicalBlockProvisioning::parse(&lbp.build(0)), Ok(lbp));
        let bdc = BlockDeviceCharacteristics {
            rotation_rate: NON_ROTATING_MEDIUM,
            form_factor: 0,
        };
        assert_eq!(BlockDeviceCharacteristics::parse(&bdc.build(0)), Ok(bdc));
    }

    proptest! {
        #[test]
        fn parsers_are_total(b in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = StandardInquiry::parse(&b);
            let _ = SupportedVpdPages::parse(&b);
            let _ = UnitSerialNumber::parse(&b);
            let _ = DeviceIdentification::parse(&b);
            let _ = BlockLimits::parse(&b);
            let _ = BlockDeviceCharacteristics::parse(&b);
            let _ = LogicalBlockProvisioning::parse(&b);
        }

        #[test]
        fn standard_inquiry_round_trip(
            q in 0u8..8, t in 0u8..32, rmb in any::<bool>(), v in any::<u8>(), flags in any::<[bool; 8]>(), tpgs in 0u8..4,
            vendor in "[A-Z0-9]{0,8}", product in "[A-Z0-9-]{0,16}", rev in "[0-9]{0,4}",
            vds in proptest::collection::vec(1u16.., 0..8),
        ) {
            let inq = StandardInquiry {
                qualifier: q, device_type: PeripheralType(t), removable: rmb, version: v,
                hisup: flags[0], response_data_format: 2, sccs: flags[1], tpgs, three_pc: flags[2],
                protect: flags[3], encserv: flags[4], multip: flags[5], cmdque: flags[6],
                vendor, product, revision: rev, version_descriptors: vds,
            };
            prop_assert_eq!(StandardInquiry::parse(&inq.build()), Ok(inq));
        }

        #[test]
        fn lbp_round_trip(te in any::<u8>(), f in any::<[bool; 6]>(), pt in 0u8..8) {
            let l = LogicalBlockProvisioning { threshold_exponent: te, lbpu: f[0], lbpws: f[1], lbpws10: f[2],
                lbprz: f[3], anc_sup: f[4], dp: f[5], provisioning_type: pt };
            prop_assert_eq!(LogicalBlockProvisioning::parse(&l.build(0)), Ok(l));
        }

        #[test]
        fn serial_round_trip(s in "[A-Za-z0-9]{1,32}") {
            let u = UnitSerialNumber { serial: s };
            prop_assert_eq!(UnitSerialNumber::parse(&u.build(0)), Ok(u));
        }

        #[test]
        fn block_limits_round_trip(
            wsnz in any::<bool>(), caw in any::<u8>(), g in any::<u16>(),
            mt in any::<u32>(), ot in any::<u32>(), mu in any::<u32>(), md in any::<u32>(),
            uga in proptest::option::of(0u32..0x8000_0000), ws in any::<u64>(),
        ) {
            let bl = BlockLimits {
                wsnz, max_compare_and_write: caw, optimal_transfer_granularity: g,
                max_transfer: mt, optimal_transfer: ot, max_prefetch: 0,
                max_unmap_lba_count: mu, max_unmap_descriptors: md, optimal_unmap_granularity: 1,
                unmap_granularity_alignment: uga, max_write_same: ws,
            };
            prop_assert_eq!(BlockLimits::parse(&bl.build(0)), Ok(bl));
        }

        #[test]
        fn designators_round_trip(names in proptest::collection::vec("[a-z0-9.:,]{1,60}", 0..4), rtp in any::<u16>()) {
            let mut designators: Vec<Designator> = names.iter()
                .map(|n| Designator::iscsi_name(Association::TARGET_PORT, n)).collect();
            designators.push(Designator::relative_target_port(rtp));
            let di = DeviceIdentification { designators };
            let p = DeviceIdentification::parse(&di.build(0)).unwrap();
            prop_assert_eq!(&p, &di);
            prop_assert_eq!(p.relative_target_port(), Some(rtp));
        }
    }
}
