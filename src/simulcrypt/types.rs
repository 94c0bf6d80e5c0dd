//! The numbers of ETSI TS 103 197: message types, parameter types and error codes of the
//! ECMG<->SCS (§5) and EMMG<->MUX (§6) interfaces, as enums that can still say "unknown".

use std::fmt;

macro_rules! spec_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $var:ident = $val:expr, $text:expr;)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u16)]
        pub enum $name {
            $($(#[$vm])* $var = $val,)*
        }

        impl $name {
            /// The value from the wire, if the spec names it.
            pub fn from_u16(v: u16) -> Option<Self> {
                match v {
                    $($val => Some($name::$var),)*
                    _ => None,
                }
            }

            /// The wire value.
            pub fn value(self) -> u16 {
                self as u16
            }

            /// The name the spec gives it.
            pub fn name(self) -> &'static str {
                match self {
                    $($name::$var => $text,)*
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{} ({:#06x})", self.name(), self.value())
            }
        }
    };
}

spec_enum! {
    /// message_type of both interfaces (TS 103 197 Tables 4 and 11).
    MessageType {
        /// ECMG<->SCS channel_setup.
        EcmgChannelSetup = 0x0001, "channel_setup";
        /// ECMG<->SCS channel_test.
        EcmgChannelTest = 0x0002, "channel_test";
        /// ECMG<->SCS channel_status.
        EcmgChannelStatus = 0x0003, "channel_status";
        /// ECMG<->SCS channel_close.
        EcmgChannelClose = 0x0004, "channel_close";
        /// ECMG<->SCS channel_error.
        EcmgChannelError = 0x0005, "channel_error";
        /// EMMG<->MUX channel_setup.
        EmmgChannelSetup = 0x0011, "channel_setup";
        /// EMMG<->MUX channel_test.
        EmmgChannelTest = 0x0012, "channel_test";
        /// EMMG<->MUX channel_status.
        EmmgChannelStatus = 0x0013, "channel_status";
        /// EMMG<->MUX channel_close.
        EmmgChannelClose = 0x0014, "channel_close";
        /// EMMG<->MUX channel_error.
        EmmgChannelError = 0x0015, "channel_error";
        /// ECMG<->SCS stream_setup.
        EcmgStreamSetup = 0x0101, "stream_setup";
        /// ECMG<->SCS stream_test.
        EcmgStreamTest = 0x0102, "stream_test";
        /// ECMG<->SCS stream_status.
        EcmgStreamStatus = 0x0103, "stream_status";
        /// ECMG<->SCS stream_close_request.
        EcmgStreamCloseRequest = 0x0104, "stream_close_request";
        /// ECMG<->SCS stream_close_response.
        EcmgStreamCloseResponse = 0x0105, "stream_close_response";
        /// ECMG<->SCS stream_error.
        EcmgStreamError = 0x0106, "stream_error";
        /// EMMG<->MUX stream_setup.
        EmmgStreamSetup = 0x0111, "stream_setup";
        /// EMMG<->MUX stream_test.
        EmmgStreamTest = 0x0112, "stream_test";
        /// EMMG<->MUX stream_status.
        EmmgStreamStatus = 0x0113, "stream_status";
        /// EMMG<->MUX stream_close_request.
        EmmgStreamCloseRequest = 0x0114, "stream_close_request";
        /// EMMG<->MUX stream_close_response.
        EmmgStreamCloseResponse = 0x0115, "stream_close_response";
        /// EMMG<->MUX stream_error.
        EmmgStreamError = 0x0116, "stream_error";
        /// EMMG<->MUX stream_BW_request.
        EmmgStreamBwRequest = 0x0117, "stream_BW_request";
        /// EMMG<->MUX stream_BW_allocation.
        EmmgStreamBwAllocation = 0x0118, "stream_BW_allocation";
        /// ECMG<->SCS CW_provision.
        EcmgCwProvision = 0x0201, "CW_provision";
        /// ECMG<->SCS ECM_response.
        EcmgEcmResponse = 0x0202, "ECM_response";
        /// EMMG<->MUX data_provision.
        EmmgDataProvision = 0x0211, "data_provision";
    }
}

spec_enum! {
    /// ECMG<->SCS parameter_type (TS 103 197 Table 5).
    EcmgParam {
        /// Super_CAS_id: CA_system_id (16 bits) + CA_subsystem_id (16 bits).
        SuperCasId = 0x0001, "Super_CAS_id";
        /// 0 = sections, 1 = TS packets.
        SectionTspktFlag = 0x0002, "section_TSpkt_flag";
        /// ms, signed.
        DelayStart = 0x0003, "delay_start";
        /// ms, signed.
        DelayStop = 0x0004, "delay_stop";
        /// ms, signed.
        TransitionDelayStart = 0x0005, "transition_delay_start";
        /// ms, signed.
        TransitionDelayStop = 0x0006, "transition_delay_stop";
        /// ms.
        EcmRepPeriod = 0x0007, "ECM_rep_period";
        /// Streams per channel.
        MaxStreams = 0x0008, "max_streams";
        /// 100 ms units.
        MinCpDuration = 0x0009, "min_CP_duration";
        /// CWs of future periods in a CW_provision.
        LeadCw = 0x000A, "lead_CW";
        /// CWs per ECM.
        CwPerMsg = 0x000B, "CW_per_msg";
        /// ms.
        MaxCompTime = 0x000C, "max_comp_time";
        /// Opaque to the SCS.
        AccessCriteria = 0x000D, "access_criteria";
        /// Channel id.
        EcmChannelId = 0x000E, "ECM_channel_id";
        /// Stream id.
        EcmStreamId = 0x000F, "ECM_stream_id";
        /// 100 ms units.
        NominalCpDuration = 0x0010, "nominal_CP_duration";
        /// 1 = access_criteria in every CW_provision.
        AccessCriteriaTransferMode = 0x0011, "access_criteria_transfer_mode";
        /// Crypto period number.
        CpNumber = 0x0012, "CP_number";
        /// 100 ms units.
        CpDuration = 0x0013, "CP_duration";
        /// CP_number (16 bits) + CW.
        CpCwCombination = 0x0014, "CP_CW_combination";
        /// The ECM (sections or TS packets).
        EcmDatagram = 0x0015, "ECM_datagram";
        /// ms, signed.
        AcDelayStart = 0x0016, "AC_delay_start";
        /// ms, signed.
        AcDelayStop = 0x0017, "AC_delay_stop";
        /// CW encryption (opaque).
        CwEncryption = 0x0018, "CW_encryption";
        /// ECM id.
        EcmId = 0x0019, "ECM_id";
        /// An [`EcmgErrorStatus`].
        ErrorStatus = 0x7000, "error_status";
        /// Free form, usually the offending parameter_type.
        ErrorInformation = 0x7001, "error_information";
    }
}

spec_enum! {
    /// EMMG<->MUX parameter_type (TS 103 197 Table 12).
    EmmgParam {
        /// Client id (Super_CAS_id style).
        ClientId = 0x0001, "client_id";
        /// 0 = sections, 1 = TS packets.
        SectionTspktFlag = 0x0002, "section_TSpkt_flag";
        /// Channel id.
        DataChannelId = 0x0003, "data_channel_id";
        /// Stream id.
        DataStreamId = 0x0004, "data_stream_id";
        /// The EMMs (sections or TS packets).
        Datagram = 0x0005, "datagram";
        /// kbit/s.
        Bandwidth = 0x0006, "bandwidth";
        /// 0x00 = EMM, 0x01 = private data, 0x02 = DSM-CC.
        DataType = 0x0007, "data_type";
        /// Data id.
        DataId = 0x0008, "data_id";
        /// An [`EmmgErrorStatus`].
        ErrorStatus = 0x7000, "error_status";
        /// Free form, usually the offending parameter_type.
        ErrorInformation = 0x7001, "error_information";
    }
}

spec_enum! {
    /// ECMG<->SCS error_status (TS 103 197 Table 7).
    EcmgErrorStatus {
        /// Not a valid message.
        InvalidMessage = 0x0001, "invalid message";
        /// protocol_version not supported.
        UnsupportedProtocolVersion = 0x0002, "unsupported protocol version";
        /// message_type not known.
        UnknownMessageType = 0x0003, "unknown message_type value";
        /// Message too long.
        MessageTooLong = 0x0004, "message too long";
        /// Super_CAS_id not served here.
        UnknownSuperCasId = 0x0005, "unknown Super_CAS_id value";
        /// No such channel.
        UnknownChannelId = 0x0006, "unknown ECM_channel_id value";
        /// No such stream.
        UnknownStreamId = 0x0007, "unknown ECM_stream_id value";
        /// Channel limit.
        TooManyChannels = 0x0008, "too many channels on this ECMG";
        /// Stream limit of the channel.
        TooManyStreamsOnChannel = 0x0009, "too many ECM streams on this channel";
        /// Stream limit of the ECMG.
        TooManyStreams = 0x000A, "too many ECM streams on this ECMG";
        /// CW_provision without the CWs the ECM needs.
        NotEnoughCws = 0x000B, "not enough control words to compute ECM";
        /// Out of storage.
        OutOfStorage = 0x000C, "ECMG out of storage capacity";
        /// Out of computation.
        OutOfCompute = 0x000D, "ECMG out of computational resources";
        /// parameter_type not known.
        UnknownParameterType = 0x000E, "unknown parameter_type value";
        /// A parameter of the wrong length.
        InconsistentLength = 0x000F, "inconsistent length for DVB parameter";
        /// A mandatory parameter is missing.
        MissingParameter = 0x0010, "missing mandatory DVB parameter";
        /// A parameter with a bad value.
        InvalidValue = 0x0011, "invalid value for DVB parameter";
        /// No such ECM_id.
        UnknownEcmId = 0x0012, "unknown ECM_id value";
        /// Channel id taken.
        ChannelIdInUse = 0x0013, "ECM_channel_id value already in use";
        /// Stream id taken.
        StreamIdInUse = 0x0014, "ECM_stream_id value already in use";
        /// ECM_id taken.
        EcmIdInUse = 0x0015, "ECM_id value already in use";
        /// Anything else.
        UnknownError = 0x7000, "unknown error";
        /// The ECMG cannot go on.
        UnrecoverableError = 0x7001, "unrecoverable error";
    }
}

spec_enum! {
    /// EMMG<->MUX error_status (TS 103 197 Table 14).
    EmmgErrorStatus {
        /// Not a valid message.
        InvalidMessage = 0x0001, "invalid message";
        /// protocol_version not supported.
        UnsupportedProtocolVersion = 0x0002, "unsupported protocol version";
        /// message_type not known.
        UnknownMessageType = 0x0003, "unknown message_type value";
        /// Message too long.
        MessageTooLong = 0x0004, "message too long";
        /// No such stream.
        UnknownStreamId = 0x0005, "unknown data_stream_id value";
        /// No such channel.
        UnknownChannelId = 0x0006, "unknown data_channel_id value";
        /// Channel limit.
        TooManyChannels = 0x0007, "too many channels on this MUX";
        /// Stream limit of the channel.
        TooManyStreamsOnChannel = 0x0008, "too many data streams on this channel";
        /// Stream limit of the MUX.
        TooManyStreams = 0x0009, "too many data streams on this MUX";
        /// parameter_type not known.
        UnknownParameterType = 0x000A, "unknown parameter_type";
        /// A parameter of the wrong length.
        InconsistentLength = 0x000B, "inconsistent length for DVB parameter";
        /// A mandatory parameter is missing.
        MissingParameter = 0x000C, "missing mandatory DVB parameter";
        /// A parameter with a bad value.
        InvalidValue = 0x000D, "invalid value for DVB parameter";
        /// client_id not served here.
        UnknownClientId = 0x000E, "unknown client_id value";
        /// Above the allocated bandwidth.
        ExceededBandwidth = 0x000F, "exceeded bandwidth";
        /// No such data_id.
        UnknownDataId = 0x0010, "unknown data_id value";
        /// Channel id taken.
        ChannelIdInUse = 0x0011, "data_channel_id value already in use";
        /// Stream id taken.
        StreamIdInUse = 0x0012, "data_stream_id value already in use";
        /// data_id taken.
        DataIdInUse = 0x0013, "data_id value already in use";
        /// client_id taken.
        ClientIdInUse = 0x0014, "client_id value already in use";
        /// Anything else.
        UnknownError = 0x7000, "unknown error";
        /// The MUX cannot go on.
        UnrecoverableError = 0x7001, "unrecoverable error";
    }
}

/// Name of an error_status value of either interface, for logs.
pub fn error_status_name(ecmg: bool, v: u16) -> String {
    let name = if ecmg {
        EcmgErrorStatus::from_u16(v).map(|e| e.name())
    } else {
        EmmgErrorStatus::from_u16(v).map(|e| e.name())
    };
    match name {
        Some(n) => format!("{n} ({v:#06x})"),
        None => format!("error {v:#06x}"),
    }
}

/// Names of a list of error_status values (a channel_error or stream_error), for logs.
pub fn error_status_names(ecmg: bool, status: &[u16]) -> String {
    status
        .iter()
        .map(|s| error_status_name(ecmg, *s))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip() {
        for v in 0..=0x7FFFu16 {
            if let Some(m) = MessageType::from_u16(v) {
                assert_eq!(m.value(), v);
            }
            if let Some(p) = EcmgParam::from_u16(v) {
                assert_eq!(p.value(), v);
            }
            if let Some(p) = EmmgParam::from_u16(v) {
                assert_eq!(p.value(), v);
            }
        }
        assert_eq!(MessageType::EcmgCwProvision.value(), 0x0201);
        assert_eq!(EmmgParam::DataId.value(), 0x0008);
        assert_eq!(EcmgErrorStatus::EcmIdInUse.value(), 0x0015);
        assert_eq!(EmmgErrorStatus::ClientIdInUse.value(), 0x0014);
        assert!(error_status_name(true, 0x000B).contains("control words"));
        assert!(error_status_name(false, 0x1234).contains("0x1234"));
        assert_eq!(
            error_status_names(false, &[0x000F, 0x1234]),
            "exceeded bandwidth (0x000f), error 0x1234"
        );
    }
}
