//! The newcamd server's users: from `--user NAME:PASSWORD` flags or a TOML file.
//! Passwords are kept only in their MD5-crypt form (what a client sends).
//!
//! ```toml
//! [[user]]
//! name = "receiver1"
//! password = "secret"
//! au = true        # may send EMMs and sees the card serial; default true
//! ```

use std::fmt;

use serde::Deserialize;

use super::crypto::crypt_password;
use super::error::NewcamdError;

/// One user allowed to log in.
#[derive(Clone)]
pub struct User {
    /// Login name.
    pub name: String,
    /// `crypt(password, "$1$abcdefgh$")`, compared with what the client sends.
    crypt_password: String,
    /// May send EMMs to the card and sees its serial in MSG_CARD_DATA.
    pub au: bool,
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("name", &self.name)
            .field("au", &self.au)
            .finish_non_exhaustive()
    }
}

impl User {
    /// A user with a clear-text password.
    pub fn new(name: &str, password: &str, au: bool) -> Result<User, NewcamdError> {
        if name.is_empty() || name.len() > super::messages::MAX_LOGIN_FIELD || name.contains('\0') {
            return Err(NewcamdError::BadUsers(format!(
                "user name '{name}' must be 1..=64 bytes without NUL"
            )));
        }
        if password.is_empty() || password.contains('\0') {
            return Err(NewcamdError::BadUsers(format!(
                "user '{name}' needs a non-empty password without NUL"
            )));
        }
        Ok(User {
            name: name.to_owned(),
            crypt_password: crypt_password(password),
            au,
        })
    }

    /// The session key's password part: the crypted password.
    pub fn crypt_password(&self) -> &str {
        &self.crypt_password
    }

    /// Whether `crypted` (as a client sent it) is this user's password; compared in
    /// constant time.
    pub fn password_matches(&self, crypted: &str) -> bool {
        let a = self.crypt_password.as_bytes();
        let b = crypted.as_bytes();
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

/// All users of one server.
#[derive(Debug, Clone, Default)]
pub struct Users {
    list: Vec<User>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default)]
    user: Vec<UserEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    name: String,
    password: String,
    #[serde(default = "yes")]
    au: bool,
}

fn yes() -> bool {
    true
}

impl Users {
    /// Add a user; names are unique.
    pub fn add(&mut self, user: User) -> Result<(), NewcamdError> {
        if self.list.iter().any(|u| u.name == user.name) {
            return Err(NewcamdError::BadUsers(format!(
                "user '{}' is given twice",
                user.name
            )));
        }
        self.list.push(user);
        Ok(())
    }

    /// Add a user from `NAME:PASSWORD` (the password may contain `:`); AU allowed.
    pub fn add_flag(&mut self, spec: &str) -> Result<(), NewcamdError> {
        let Some((name, password)) = spec.split_once(':') else {
            return Err(NewcamdError::BadUsers(format!(
                "'{spec}' is not NAME:PASSWORD"
            )));
        };
        self.add(User::new(name, password, true)?)
    }

    /// Add the users of a TOML users file (`[[user]] name, password, au`).
    pub fn add_toml(&mut self, text: &str) -> Result<(), NewcamdError> {
        let f: UsersFile =
            toml::from_str(text).map_err(|e| NewcamdError::BadUsers(e.to_string()))?;
        for u in f.user {
            self.add(User::new(&u.name, &u.password, u.au)?)?;
        }
        Ok(())
    }

    /// The user called `name`.
    pub fn get(&self, name: &str) -> Option<&User> {
        self.list.iter().find(|u| u.name == name)
    }

    /// How many users there are.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_file() {
        let mut u = Users::default();
        u.add_flag("alice:pa:ss").unwrap();
        assert!(u.add_flag("alice:x").is_err());
        assert!(u.add_flag("nopassword").is_err());
        assert!(u.add_flag(":x").is_err());
        u.add_toml("[[user]]\nname = \"bob\"\npassword = \"pw\"\nau = false\n\n[[user]]\nname = \"carol\"\npassword = \"c\"\n")
            .unwrap();
        assert!(u.add_toml("[[user]]\nname = \"x\"\n").is_err());
        assert!(u
            .add_toml("[[user]]\nname = \"y\"\npassword = \"p\"\nrole = 1\n")
            .is_err());
        assert_eq!(u.len(), 3);
        let a = u.get("alice").unwrap();
        assert!(a.au);
        assert!(a.password_matches(&crypt_password("pa:ss")));
        assert!(!a.password_matches(&crypt_password("pa:sS")));
        assert!(!u.get("bob").unwrap().au);
        assert!(u.get("carol").unwrap().au);
        assert!(!format!("{a:?}").contains('$'));
    }
}
