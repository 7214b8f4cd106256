fn main() {
    print!("{}", orb_crds::crd_yaml());
}
