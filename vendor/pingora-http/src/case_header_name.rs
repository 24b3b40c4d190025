// Copyright 2026 Cloudflare, Inc.
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
// http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

use crate::*;
use bytes::Bytes;
use http::header;

#[derive(Debug, Clone)]
pub struct CaseHeaderName(Bytes);

impl CaseHeaderName {
    pub fn new(name: String) -> Self {
        CaseHeaderName(name.into())
    }
}

impl CaseHeaderName {
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }

    pub fn from_slice(buf: &[u8]) -> Self {
        CaseHeaderName(Bytes::copy_from_slice(buf))
    }
}

/// A trait that converts into case-sensitive header names.
pub trait IntoCaseHeaderName {
    fn into_case_header_name(self) -> CaseHeaderName;

    /// The header's name and the case to write it in. By default the name is parsed from the
    /// case form; a type that already holds a parsed name hands it over instead, which saves
    /// parsing (and, for a name that is not a standard header, allocating) it again.
    /// `None` if the name is not a valid header name.
    fn into_names(self) -> Option<(HeaderName, CaseHeaderName)>
    where
        Self: Sized,
    {
        let case = self.into_case_header_name();
        let name = HeaderName::from_bytes(case.as_slice()).ok()?;
        Some((name, case))
    }

    /// The header's name alone, for a header without a case map: a type that holds a parsed
    /// name hands it over without making its case form (for a name with no titled form, that
    /// is an allocation made only to be dropped). `None` exactly when `into_names` is `None`.
    fn into_name(self) -> Option<HeaderName>
    where
        Self: Sized,
    {
        self.into_names().map(|(name, _)| name)
    }
}

/// A parsed name with the case to write it in, e.g.
/// `(HeaderName::from_static("x-forwarded-for"), "X-Forwarded-For")`: inserted without parsing
/// or allocating. The two must be the same name but for case; `into_names` refuses a pair
/// that is not.
impl IntoCaseHeaderName for (HeaderName, &'static str) {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(Bytes::from_static(self.1.as_bytes()))
    }

    fn into_names(self) -> Option<(HeaderName, CaseHeaderName)> {
        let (name, case) = self;
        if !name.as_str().eq_ignore_ascii_case(case) {
            return None;
        }
        Some((name, CaseHeaderName(Bytes::from_static(case.as_bytes()))))
    }

    fn into_name(self) -> Option<HeaderName> {
        let (name, case) = self;
        name.as_str().eq_ignore_ascii_case(case).then_some(name)
    }
}

impl IntoCaseHeaderName for CaseHeaderName {
    fn into_case_header_name(self) -> CaseHeaderName {
        self
    }
}

impl IntoCaseHeaderName for String {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(self.into())
    }
}

impl IntoCaseHeaderName for &'static str {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(self.into())
    }
}

impl IntoCaseHeaderName for HeaderName {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(titled_header_name(&self))
    }

    fn into_names(self) -> Option<(HeaderName, CaseHeaderName)> {
        let case = CaseHeaderName(titled_header_name(&self));
        Some((self, case))
    }

    fn into_name(self) -> Option<HeaderName> {
        Some(self)
    }
}

impl IntoCaseHeaderName for &HeaderName {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(titled_header_name(self))
    }

    fn into_names(self) -> Option<(HeaderName, CaseHeaderName)> {
        Some((self.clone(), CaseHeaderName(titled_header_name(self))))
    }

    fn into_name(self) -> Option<HeaderName> {
        Some(self.clone())
    }
}

impl IntoCaseHeaderName for Bytes {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(self)
    }
}

fn titled_header_name(header_name: &HeaderName) -> Bytes {
    titled_header_name_str(header_name).map_or_else(
        || Bytes::copy_from_slice(header_name.as_str().as_bytes()),
        |s| Bytes::from_static(s.as_bytes()),
    )
}

pub(crate) fn titled_header_name_str(header_name: &HeaderName) -> Option<&'static str> {
    Some(match *header_name {
        header::ACCEPT_RANGES => "Accept-Ranges",
        header::AGE => "Age",
        header::CACHE_CONTROL => "Cache-Control",
        header::CONNECTION => "Connection",
        header::CONTENT_TYPE => "Content-Type",
        header::CONTENT_ENCODING => "Content-Encoding",
        header::CONTENT_LENGTH => "Content-Length",
        header::DATE => "Date",
        header::TRANSFER_ENCODING => "Transfer-Encoding",
        header::HOST => "Host",
        header::SERVER => "Server",
        header::SET_COOKIE => "Set-Cookie",
        // TODO: add more const header here to map to their titled case
        // TODO: automatically upper case the first letter?
        _ => {
            return None;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_alone_is_the_name_of_both() {
        fn same(name: impl IntoCaseHeaderName + Clone) {
            let both = name.clone().into_names().map(|(n, _)| n);
            assert_eq!(name.into_name(), both);
        }
        same(HeaderName::from_static("x-request-id"));
        same(&HeaderName::from_static("x-request-id"));
        same(header::SERVER);
        same((HeaderName::from_static("x-a"), "X-A"));
        same((HeaderName::from_static("x-a"), "X-B"));
        same("X-Custom");
        same("bad name");
        assert_eq!((HeaderName::from_static("x-a"), "X-B").into_name(), None);
        assert_eq!("bad name".into_name(), None);
    }

    #[test]
    fn test_case_header_name() {
        assert_eq!("FoO".into_case_header_name().as_slice(), b"FoO");
        assert_eq!("FoO".to_string().into_case_header_name().as_slice(), b"FoO");
        assert_eq!(header::SERVER.into_case_header_name().as_slice(), b"Server");
    }
}
