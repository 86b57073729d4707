//! Turning a model's `cmd` text into an argv, the way llama-swap does it.
//!
//! Commands are run directly, never through a shell, so swapd splits them itself: comment
//! lines are dropped (before macro expansion), a trailing `\` joins a line to the next, and the
//! result is split with POSIX shell quoting rules (single quotes, double quotes with backslash
//! escapes, backslash outside quotes). No variable expansion, globbing or pipes happen.

/// Removes lines whose trimmed text starts with `#`.
pub(crate) fn strip_comment_lines(text: &str) -> String {
    text.split('\n')
        .filter(|line| !line.trim().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Joins continuation lines: a line ending in `\` loses the backslash and its indentation
/// and is followed by a space, as in llama-swap's `SanitizeCommand`.
fn join_continuations(text: &str) -> String {
    text.split('\n')
        .filter(|line| !line.trim().starts_with('#'))
        .map(|line| {
            let trimmed = line.trim();
            match trimmed.strip_suffix('\\') {
                Some(joined) => format!("{joined} "),
                None => line.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Splits a command line into arguments with POSIX shell quoting rules.
///
/// Comment lines are removed and trailing-backslash lines joined first, so this accepts a
/// `cmd` or `cmdStop` exactly as written in the config. An unterminated quote is an error;
/// an empty result is returned as an empty vector for the caller to judge.
pub fn split_command(text: &str) -> Result<Vec<String>, String> {
    let text = join_continuations(text);
    let mut arguments = Vec::new();
    let mut current: Option<String> = None;
    let mut characters = text.chars().peekable();
    while let Some(character) = characters.next() {
        match character {
            ' ' | '\t' | '\n' | '\r' => {
                if let Some(argument) = current.take() {
                    arguments.push(argument);
                }
            }
            '\\' => match characters.next() {
                // A backslash before a line break continues the line.
                Some('\n') => {}
                Some(escaped) => current.get_or_insert_with(String::new).push(escaped),
                None => current.get_or_insert_with(String::new).push('\\'),
            },
            '\'' => {
                let argument = current.get_or_insert_with(String::new);
                loop {
                    match characters.next() {
                        Some('\'') => break,
                        Some(quoted) => argument.push(quoted),
                        None => return Err("unterminated single quote".to_string()),
                    }
                }
            }
            '"' => {
                let argument = current.get_or_insert_with(String::new);
                loop {
                    match characters.next() {
                        Some('"') => break,
                        Some('\\') => match characters.peek() {
                            Some('$' | '`' | '"' | '\\') => {
                                argument.push(characters.next().unwrap_or('\\'));
                            }
                            Some('\n') => {
                                characters.next();
                            }
                            _ => argument.push('\\'),
                        },
                        Some(quoted) => argument.push(quoted),
                        None => return Err("unterminated double quote".to_string()),
                    }
                }
            }
            other => current.get_or_insert_with(String::new).push(other),
        }
    }
    if let Some(argument) = current {
        arguments.push(argument);
    }
    Ok(arguments)
}

/// Renders an argv as one shell-quoted line, for display and copy-pasting.
pub(crate) fn display_command(arguments: &[String]) -> String {
    arguments
        .iter()
        .map(|argument| quote(argument))
        .collect::<Vec<_>>()
        .join(" ")
}

fn quote(argument: &str) -> String {
    let safe = !argument.is_empty()
        && argument
            .chars()
            .all(|character| character.is_ascii_alphanumeric() || "_@%+=:,./-".contains(character));
    if safe {
        argument.to_string()
    } else {
        format!("'{}'", argument.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(text: &str) -> Vec<String> {
        split_command(text).expect("splits")
    }

    #[test]
    fn splits_on_whitespace_and_newlines() {
        assert_eq!(split("  a  b\tc\n d "), ["a", "b", "c", "d"]);
        assert!(split("   \n ").is_empty());
    }

    #[test]
    fn comment_lines_and_continuations() {
        let text = "server \\\n  # a comment\n  --port 1 \\\n  --x\n";
        assert_eq!(split(text), ["server", "--port", "1", "--x"]);
        assert_eq!(
            strip_comment_lines("a\n  # b\nc # not a line comment"),
            "a\nc # not a line comment"
        );
    }

    #[test]
    fn quotes_and_escapes() {
        assert_eq!(split(r#"a 'b c' "d e""#), ["a", "b c", "d e"]);
        assert_eq!(
            split(r#"--x="a \"q\" \$ \n" 'it'\''s'"#),
            ["--x=a \"q\" $ \\n", "it's"]
        );
        assert_eq!(split(r"a\ b c\\d"), ["a b", "c\\d"]);
        assert_eq!(split(r#"'' "" x"#), ["", "", "x"]);
        assert_eq!(split("a'b'\"c\"d"), ["abcd"]);
        assert_eq!(split("'# not a comment'"), ["# not a comment"]);
    }

    #[test]
    fn unterminated_quotes_are_errors() {
        assert_eq!(
            split_command("a 'b").expect_err("open"),
            "unterminated single quote"
        );
        assert_eq!(
            split_command("a \"b").expect_err("open"),
            "unterminated double quote"
        );
    }

    #[test]
    fn display_quotes_only_when_needed() {
        let arguments = split(r#"srv --a b 'c d' "it's" ''"#);
        assert_eq!(
            display_command(&arguments),
            r#"srv --a b 'c d' 'it'\''s' ''"#
        );
        assert_eq!(split(&display_command(&arguments)), arguments);
    }
}
