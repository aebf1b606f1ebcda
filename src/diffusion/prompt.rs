//! The thesis's prompt cut: prompts over 300 characters are cut at the last comma in
//! the first 300 characters (else the last space), so CLIP's 77 tokens are not
//! exceeded mid-phrase.

/// Default cut length of the thesis (`cut_prompt(prompt, max_len=300, delimiter=',')`).
pub const THESIS_MAX_CHARS: usize = 300;

/// Cuts `prompt` exactly as the thesis's `cut_prompt` does, counting Unicode code
/// points as Python's `len` does. Faithful to its corners too: a comma at index 0
/// counts as none, and with no space either (`rfind` = -1) Python's `prompt[:-1]`
/// drops only the last character.
pub fn cut_prompt(prompt: &str, max_chars: usize) -> String {
    let chars: Vec<char> = prompt.chars().collect();
    if chars.len() <= max_chars {
        return prompt.to_string();
    }
    let head = &chars[..max_chars];
    let rfind = |c: char| head.iter().rposition(|&x| x == c).map_or(-1, |i| i as i64);
    let mut idx = rfind(',');
    if idx <= 0 {
        idx = rfind(' ');
    }
    let end = if idx < 0 {
        chars.len() as i64 + idx
    } else {
        idx
    };
    chars[..end as usize].iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_prompts_are_unchanged() {
        assert_eq!(cut_prompt("a cat, a dog", 300), "a cat, a dog");
        assert_eq!(cut_prompt("", 300), "");
    }

    #[test]
    fn cuts_at_last_comma_else_space_else_drops_last_char() {
        assert_eq!(cut_prompt("ab, cd, ef gh", 9), "ab, cd");
        assert_eq!(cut_prompt("ab cd ef gh", 7), "ab cd");
        assert_eq!(cut_prompt(",ab cd ef", 7), ",ab cd");
        assert_eq!(cut_prompt("abcdefgh", 4), "abcdefg");
        assert_eq!(cut_prompt("é,éééé", 3), "é");
    }
}
